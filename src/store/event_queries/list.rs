//! The SQL of `GET /api/events`: the page of a window with its total, from the filters of an
//! [`EventsQuery`], every value a numbered parameter.

use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};

use super::{AttributeFilter, EventsQuery, COLUMNS};

/// Windows up to this long are read through the time-range B-tree, with the attribute filters
/// checked per row. PostgreSQL has no statistics on JSON keys and assumes `?` and `@>` match
/// 0.1 % of rows, so for a common attribute (`status`) it would otherwise read the whole GIN
/// posting list (measured: 350 ms instead of 9 ms per request on 2 M events at the default
/// one-hour period). Longer windows (a raised `events_list_max_period_hours`) keep the
/// operators, so that rare attributes and values are found through the GIN indexes of V3.
/// Attributes of `api.indexed_attributes` have partial indexes of their own, used in any window
/// (`store::attribute_indexes`).
pub(crate) const TIME_FIRST_WINDOW_HOURS: i64 = 24;

/// The filters of a list request after its time range (`event_time >= $1 AND event_time < $2`),
/// each as ` AND …` with parameters numbered from `$3`.
struct Filters {
    /// Whether the window is short enough for the time range to lead (see
    /// [`TIME_FIRST_WINDOW_HOURS`]).
    time_first: bool,
    /// For the rows of `events`.
    events: String,
    /// The same for rows of the partial minutes at the window's ends: always the row-checked
    /// forms, since those spans are at most a minute long.
    edges: String,
    /// For rows of `event_counts` (event and entity type, hidden types; the attribute is part
    /// of the count key).
    counts: String,
    /// Where the total comes from.
    total: TotalFrom,
    params: Vec<Param>,
}

/// The source of a list's total (see `sql/V4__event_counts.sql`,
/// `sql/V5__event_value_counts.sql` and `sql/V6__event_value_counts_10min.sql`).
enum TotalFrom {
    /// `event_counts` of this kind and attribute.
    Counts(i16, String),
    /// `event_value_counts` of this attribute and new value, unless the window holds
    /// occurrences of the attribute that are not counted by value (kind 3 of `event_counts`):
    /// then the events themselves.
    Values(String, String),
}

/// The filters and their parameters for a list request. Every filter is served by an index of
/// `sql/`: the time range (B-tree) and, over long windows, `properties @> {name: {new_value}}`
/// and `properties ? name` (both the GIN `jsonb_ops` index of V3; V13 dropped the second).
fn filters(q: &EventsQuery, hidden_types: Vec<String>) -> Filters {
    let time_first = q.to - q.from <= chrono::Duration::hours(TIME_FIRST_WINDOW_HOURS);
    // The function forms of `?` and `@>`: same results, not indexable, so the planner takes
    // the time range.
    const ROW_CHECKED: (&str, &str) = (
        " AND jsonb_exists(properties, $?)",
        " AND jsonb_contains(properties, $?::jsonb)",
    );
    let (exists, contains) = if time_first {
        ROW_CHECKED
    } else {
        (" AND properties ? $?", " AND properties @> $?::jsonb")
    };
    let mut f = Filters {
        time_first,
        events: String::new(),
        edges: String::new(),
        counts: String::new(),
        total: TotalFrom::Counts(0, String::new()),
        params: vec![
            (Box::new(q.from), Type::TIMESTAMPTZ),
            (Box::new(q.to), Type::TIMESTAMPTZ),
        ],
    };
    // Adds a parameter and, with its number, a clause to the events, edge and count filters.
    let push = |f: &mut Filters,
                clauses: (&str, &str, &str),
                p: Box<dyn ToSql + Sync + Send>,
                ty: Type| {
        f.params.push((p, ty));
        let n = format!("${}", f.params.len());
        f.events.push_str(&clauses.0.replace("$?", &n));
        f.edges.push_str(&clauses.1.replace("$?", &n));
        f.counts.push_str(&clauses.2.replace("$?", &n));
    };
    for (clause, value) in [
        (" AND event_type = $?", &q.event_type),
        (" AND entity_type = $?", &q.entity_type),
    ] {
        if let Some(value) = value {
            push(
                &mut f,
                (clause, clause, clause),
                Box::new(value.clone()),
                Type::TEXT,
            );
        }
    }
    // An attribute of `api.indexed_attributes` is named as a literal, so that the partial
    // indexes of `store::attribute_indexes` (`WHERE jsonb_exists(properties, 'name')`) serve the
    // rows of any window. `properties -> name -> 'new_value' = '"value"'` is true exactly when
    // `properties @> {name: {new_value: value}}` is (tests/it/api/counts.rs runs every request
    // both ways, over string, number, null, array and non-object values).
    let has_attribute = |name: &str| {
        format!(
            " AND jsonb_exists(properties, {})",
            crate::store::attribute_indexes::literal(name)
        )
    };
    match &q.attribute {
        Some(AttributeFilter::Exists(name)) => {
            f.total = TotalFrom::Counts(1, name.clone());
            let own_index = q.attribute_indexed.then(|| has_attribute(name));
            push(
                &mut f,
                (own_index.as_deref().unwrap_or(exists), ROW_CHECKED.0, ""),
                Box::new(name.clone()),
                Type::TEXT,
            );
        }
        Some(AttributeFilter::NewValue { name, value }) => {
            f.total = TotalFrom::Values(name.clone(), value.clone());
            let mut inner = serde_json::Map::new();
            inner.insert("new_value".into(), value.clone().into());
            let mut outer = serde_json::Map::new();
            outer.insert(name.clone(), inner.into());
            let document = Box::new(serde_json::Value::Object(outer));
            if q.attribute_indexed {
                push(&mut f, ("", ROW_CHECKED.1, ""), document, Type::JSONB);
                let clause = format!(
                    "{} AND properties -> {} -> 'new_value' = $?::jsonb",
                    has_attribute(name),
                    crate::store::attribute_indexes::literal(name)
                );
                push(
                    &mut f,
                    (&clause, "", ""),
                    Box::new(serde_json::Value::String(value.clone())),
                    Type::JSONB,
                );
            } else {
                push(&mut f, (contains, ROW_CHECKED.1, ""), document, Type::JSONB);
            }
        }
        None => {}
    }
    if !hidden_types.is_empty() {
        let clause = " AND event_type <> ALL($?::text[])";
        push(
            &mut f,
            (clause, clause, clause),
            Box::new(hidden_types),
            Type::TEXT_ARRAY,
        );
    }
    f
}

/// Microseconds in a minute, the finer `event_counts` bucket.
const MINUTE: i64 = 60_000_000;
/// Microseconds in ten minutes, the coarser `event_counts` bucket.
const TEN_MINUTES: i64 = 10 * MINUTE;

/// The whole spans of `span` microseconds inside `[from, to)`, as `[lo, hi)`:
/// `from <= lo <= hi <= to`, both multiples of `span` since the Unix epoch (the buckets of
/// `event_counts`), or `lo = hi = to` when the window holds no whole span.
pub fn whole_spans(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    span: i64,
) -> (DateTime<Utc>, DateTime<Utc>) {
    // Microseconds, as PostgreSQL stores them.
    let (from_us, to_us) = (from.timestamp_micros(), to.timestamp_micros());
    let lo = from_us.div_euclid(span) * span
        + if from_us.rem_euclid(span) == 0 {
            0
        } else {
            span
        };
    let hi = to_us.div_euclid(span) * span;
    match (
        DateTime::<Utc>::from_timestamp_micros(lo),
        DateTime::<Utc>::from_timestamp_micros(hi),
    ) {
        (Some(lo), Some(hi)) if lo < hi => (lo, hi),
        _ => (to, to),
    }
}

/// The whole minutes of `[from, to)` (see [`whole_spans`]).
pub fn whole_minutes(from: DateTime<Utc>, to: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    whole_spans(from, to, MINUTE)
}

/// The list and count statements for a request, for `EXPLAIN` in tests and for the handler.
///
/// The count sums the 10-minute counts of `event_counts` over the window's whole 10-minute
/// spans, the per-minute counts over its other whole minutes (at most 18), and counts the rows
/// of the partial minutes at both ends: the part inside the window, or the minute's count less
/// the part outside when that is shorter — at most half a minute of rows at each end when the
/// window holds a whole minute, whatever the window's length. The part after the window counts
/// as ending at the request's time (`now`), so a window that ends at the present counts the
/// few rows after its end, not the rows of its last minute; events timed after the request
/// are still counted, only at a higher cost. With `new_value` it sums the
/// `event_value_counts` of the same spans, unless the minutes whose counts it uses hold
/// occurrences of the attribute that are not counted by value (captured attributes, long
/// values): then it counts the window's events.
pub fn list_sql(q: &EventsQuery, hidden_types: Vec<String>) -> ListSql {
    let f = filters(q, hidden_types);
    let mut params = f.params;
    let n = params.len();
    let limit = i64::from(q.page_size);
    let offset = i64::from(q.page - 1) * i64::from(q.page_size);
    params.push((Box::new(limit), Type::INT8));
    params.push((Box::new(offset), Type::INT8));
    let (lo, hi) = whole_minutes(q.from, q.to);
    let events = f.events;
    let edges = f.edges;
    let counts = f.counts;
    // Parameters after the filters', limit and offset.
    let mut push = |p: Box<dyn ToSql + Sync + Send>, ty: Type| {
        params.push((p, ty));
        params.len()
    };
    let (limit_n, offset_n) = (n + 1, n + 2);
    let lo_n = push(Box::new(lo), Type::TIMESTAMPTZ);
    let hi_n = push(Box::new(hi), Type::TIMESTAMPTZ);
    // The partial minutes at the window's ends are counted row by row: the part inside the
    // window, or, when that is the longer part, the minute's count less the part outside (only
    // when the window holds a whole minute, so that `lo` and `hi` are the edges' boundaries).
    // The part after the window is taken as ending at the request's time: a window that ends
    // at the present, in the minute ingestion is writing, has next to nothing after it, while
    // the part inside holds every event stored since the minute began.
    let whole = lo < hi;
    let half = chrono::Duration::seconds(30);
    let minute = chrono::Duration::minutes(1);
    let after_window = (hi + minute).min(q.now.max(q.to)) - q.to;
    let first_minute_n =
        (whole && lo - q.from > half).then(|| push(Box::new(lo - minute), Type::TIMESTAMPTZ));
    let after_last_n =
        (whole && after_window < q.to - hi).then(|| push(Box::new(hi + minute), Type::TIMESTAMPTZ));
    let rows = |from: &str, to: &str| {
        format!(
            "(SELECT count(*) FROM events WHERE event_time >= {from} AND event_time < {to}{edges})"
        )
    };
    // The rows of the end minutes counted one by one, with their signs; a part that is empty
    // (a window starting or ending on a minute boundary) has no term.
    let first_edge = match first_minute_n {
        Some(m) => format!(" - {}", rows(&format!("${m}"), "$1")),
        None if q.from < lo => format!(" + {}", rows("$1", &format!("${lo_n}"))),
        None => String::new(),
    };
    let last_edge = match after_last_n {
        Some(m) => format!(" - {}", rows("$2", &format!("${m}"))),
        None if hi < q.to => format!(" + {}", rows(&format!("${hi_n}"), "$2")),
        None => String::new(),
    };
    // The per-minute counts are summed over two spans: from the first minute whose count is
    // used (the first edge's when it is counted from its minute, else `lo`) to the first whole
    // 10-minute span, and from the end of the last one to the last minute whose count is used.
    // The 10-minute counts cover the spans between.
    let (lo10, hi10) = whole_spans(lo, hi, TEN_MINUTES);
    let lo10_n = push(Box::new(lo10), Type::TIMESTAMPTZ);
    let hi10_n = push(Box::new(hi10), Type::TIMESTAMPTZ);
    let first_n = first_minute_n.unwrap_or(lo_n);
    let last_n = after_last_n.unwrap_or(hi_n);
    // Each sum is one sub-select over its spans (a `VALUES` list of `(…, lo, hi)`), each span
    // read by its own range of the count table's key: the sub-select and its aggregate are set
    // up once per request instead of once per span. `OFFSET 0` keeps the span's read a
    // sub-query of its own, run once per span, so no plan joins all of the attribute's counts.
    let sum = |spans: &[String], columns: &str, source: &str| {
        format!(
            "(SELECT coalesce(sum(s.n), 0)::bigint FROM (VALUES {}) r({columns}), \
             LATERAL (SELECT n FROM {source} AND bucket >= r.lo AND bucket < r.hi{counts} \
             OFFSET 0) s)",
            spans.join(", ")
        )
    };
    let (counted, uncounted_attribute_n) = match f.total {
        TotalFrom::Counts(kind, attribute) => {
            let kind_n = push(Box::new(kind), Type::INT2);
            let kind10_n = push(Box::new(kind + 10), Type::INT2);
            let attribute_n = push(Box::new(attribute), Type::TEXT);
            let spans = [
                format!("(${kind10_n}, ${lo10_n}, ${hi10_n})"),
                format!("(${kind_n}, ${first_n}, ${lo10_n})"),
                format!("(${kind_n}, ${hi10_n}, ${last_n})"),
            ];
            (
                sum(
                    &spans,
                    "kind, lo, hi",
                    &format!("event_counts WHERE kind = r.kind AND attribute = ${attribute_n}"),
                ),
                None,
            )
        }
        TotalFrom::Values(attribute, value) => {
            let attribute_n = push(Box::new(attribute), Type::TEXT);
            let value_n = push(Box::new(value), Type::TEXT);
            let key = format!("attribute = ${attribute_n} AND value = ${value_n}");
            (
                format!(
                    "{} + {}",
                    sum(
                        &[format!("(${lo10_n}, ${hi10_n})")],
                        "lo, hi",
                        &format!("event_value_counts_10min WHERE {key}"),
                    ),
                    sum(
                        &[
                            format!("(${first_n}, ${lo10_n})"),
                            format!("(${hi10_n}, ${last_n})"),
                        ],
                        "lo, hi",
                        &format!("event_value_counts WHERE {key}"),
                    ),
                ),
                Some(attribute_n),
            )
        }
    };
    let counted = format!("{counted}{first_edge}{last_edge}");
    let total = match uncounted_attribute_n {
        None => counted,
        Some(attribute_n) => {
            // Sub-selects run when their branch is taken, so a window without uncounted
            // occurrences never reads its events for the total.
            format!(
                "CASE WHEN EXISTS (SELECT FROM event_counts \
                     WHERE kind = 3 AND attribute = ${attribute_n} \
                       AND bucket >= ${first_n} AND bucket < ${last_n}{counts}) \
                   THEN (SELECT count(*) FROM events \
                     WHERE event_time >= $1 AND event_time < $2{events}) \
                   ELSE {counted} END"
            )
        }
    };
    ListSql {
        // The total rides along as a last column: an uncorrelated sub-select that PostgreSQL
        // evaluates once, so a page and its total cost one statement.
        list: format!(
            "SELECT {COLUMNS}, ({total}) AS total \
             FROM events WHERE event_time >= $1 AND event_time < $2{events} \
             ORDER BY event_time, id LIMIT ${limit_n} OFFSET ${offset_n}"
        ),
        count: format!("SELECT {total}"),
        prepared_list: f.time_first,
        params,
        limit,
        offset,
    }
}

/// A query parameter with its type.
pub type Param = (Box<dyn ToSql + Sync + Send>, Type);

/// SQL for one list request.
pub struct ListSql {
    /// The page query, with the total as its last column; takes `params`.
    pub list: String,
    /// The total alone, for a page past the end; takes `params`.
    pub count: String,
    /// Whether the page query may run as a prepared statement with a generic plan: true for
    /// windows where the time range leads anyway. Longer windows are planned for their values
    /// every time, so that a rare attribute is found through its index.
    pub prepared_list: bool,
    /// Filter parameters, `limit` and `offset`, then the `event_counts` ranges and keys.
    pub params: Vec<Param>,
    /// Page size.
    pub limit: i64,
    /// Rows skipped.
    pub offset: i64,
}

impl ListSql {
    /// The count query's parameters, as the driver wants them.
    pub fn count_params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.params
            .iter()
            .map(|(p, ty)| (p.as_ref() as &(dyn ToSql + Sync), ty.clone()))
            .collect()
    }

    /// The page query's parameters (the same as the count's).
    pub fn page_params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.count_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::config::ApiConfig;
    use crate::api::events::parse_query;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    fn parse(q: &str) -> Result<EventsQuery, crate::api::error::ApiError> {
        parse_query(Some(q), now(), &ApiConfig::default())
    }

    #[test]
    fn sql_uses_numbered_parameters_only() {
        // (`priority`: not indexed, as `status`'s values are by default.)
        let q = parse("event_type=a&entity_type=b&attribute_name=priority&new_value=x'--").unwrap();
        let sql = list_sql(&q, vec!["Hidden".into()]);
        assert!(
            sql.list.contains("jsonb_contains(properties, $5::jsonb)"),
            "{}",
            sql.list
        );
        assert!(
            sql.list.contains("event_type <> ALL($6::text[])"),
            "{}",
            sql.list
        );
        assert!(sql.list.ends_with("LIMIT $7 OFFSET $8"), "{}", sql.list);
        assert!(!sql.list.contains("x'--"));
        // Values: their counts, or the events when the window holds uncounted occurrences;
        // the filters, limit and offset, then the whole minutes, the whole 10-minute spans,
        // attribute and value. The window is whole minutes: no row is counted for the total.
        assert_eq!(sql.params.len(), 14);
        assert!(
            sql.count.contains(
                "EXISTS (SELECT FROM event_counts WHERE kind = 3 AND attribute = $13 \
                 AND bucket >= $9 AND bucket < $10"
            ) && sql.count.contains(
                "THEN (SELECT count(*) FROM events WHERE event_time >= $1 AND event_time < $2"
            ) && sql.count.contains(
                "(VALUES ($11, $12)) r(lo, hi), LATERAL (SELECT n FROM \
                 event_value_counts_10min WHERE attribute = $13 AND value = $14 \
                 AND bucket >= r.lo AND bucket < r.hi AND event_type = $3"
            ) && sql.count.contains(
                "(VALUES ($9, $11), ($12, $10)) r(lo, hi), LATERAL (SELECT n FROM \
                 event_value_counts WHERE attribute = $13 AND value = $14 \
                 AND bucket >= r.lo AND bucket < r.hi AND event_type = $3"
            ) && sql.count.matches("FROM events").count() == 1,
            "{}",
            sql.count
        );
        // Otherwise both take the filters, limit and offset, then the whole minutes, the whole
        // 10-minute spans and the count key, all summed in one sub-select.
        let q = parse("event_type=a&entity_type=b&attribute_name=status").unwrap();
        let sql = list_sql(&q, vec!["Hidden".into()]);
        assert_eq!(sql.params.len(), 15);
        for statement in [&sql.count, &sql.list] {
            assert!(
                statement.contains(
                    "(VALUES ($14, $11, $12), ($13, $9, $11), ($13, $12, $10)) \
                     r(kind, lo, hi), LATERAL (SELECT n FROM event_counts \
                     WHERE kind = r.kind AND attribute = $15 AND bucket >= r.lo \
                     AND bucket < r.hi AND event_type = $3 AND entity_type = $4 \
                     AND event_type <> ALL($6::text[]) OFFSET 0) s"
                ) && statement.matches("SELECT").count() == 3,
                "{statement}"
            );
        }
        // The partial minutes at the ends are counted row by row: here the minute before the
        // window's first whole minute, less the 40 s of it before the window, and the 20 s of
        // the last minute inside the window.
        let q = parse(
            "date=2024-05-01T10:59:20Z&date_to=2024-05-01T11:59:20Z\
             &attribute_name=status&page=3&page_size=20",
        )
        .unwrap();
        let sql = list_sql(&q, Vec::new());
        assert!(
            sql.count.contains(
                " - (SELECT count(*) FROM events WHERE event_time >= $8 AND event_time < $1 \
                 AND jsonb_exists(properties, $3))"
            ) && sql.count.contains(
                " + (SELECT count(*) FROM events WHERE event_time >= $7 AND event_time < $2 \
                 AND jsonb_exists(properties, $3))"
            ),
            "{}",
            sql.count
        );
        assert_eq!((sql.limit, sql.offset), (20, 40));
        // Windows longer than a day keep the operators the GIN indexes serve; the partial
        // minutes at the ends of a counted total are few rows, checked row by row.
        for (query, list, count) in [
            (
                "attribute_name=priority&new_value=x",
                "properties @> $3::jsonb",
                "properties @> $3::jsonb",
            ),
            (
                "attribute_name=status",
                "properties ? $3",
                "jsonb_exists(properties, $3)",
            ),
        ] {
            let mut long = parse(query).unwrap();
            long.from = long.to - chrono::Duration::hours(25) + chrono::Duration::seconds(20);
            let sql = list_sql(&long, Vec::new());
            assert!(sql.list.contains(list), "{}", sql.list);
            assert!(sql.count.contains(count), "{}", sql.count);
        }
    }

    #[test]
    fn a_window_ending_at_the_present_counts_the_rows_after_it() {
        let query = "date=2024-05-01T10:59:20Z&date_to=2024-05-01T11:59:20Z";
        // Twenty seconds of the last minute inside: counted row by row when the request is
        // read after the minute, as its count less the rows after the window when read a
        // second after the window's end.
        for (now, after) in [
            (now(), false),
            (now() - chrono::Duration::seconds(39), true),
        ] {
            let q = parse_query(Some(query), now, &ApiConfig::default()).unwrap();
            let sql = list_sql(&q, Vec::new());
            assert_eq!(
                sql.count.contains("WHERE event_time >= $2 AND"),
                after,
                "{now}: {}",
                sql.count
            );
            assert_eq!(
                sql.count.contains("AND event_time < $2)"),
                !after,
                "{now}: {}",
                sql.count
            );
        }
    }

    #[test]
    fn indexed_attributes_are_named_as_literals() {
        let config = ApiConfig {
            indexed_attributes: vec!["employee_id".into()],
            ..ApiConfig::default()
        };
        let parse = |q: &str| parse_query(Some(q), now(), &config).unwrap();
        let q = parse(
            "date=2024-05-01T10:59:20Z&date_to=2024-05-01T11:59:20Z\
             &attribute_name=employee_id&new_value=x'--",
        );
        assert!(q.attribute_indexed);
        let sql = list_sql(&q, Vec::new());
        // The page and an uncounted total read the value's index; the end minutes of a counted
        // total are checked row by row with the containment document ($3).
        assert!(
            sql.list.contains(
                "AND jsonb_exists(properties, 'employee_id') \
                 AND properties -> 'employee_id' -> 'new_value' = $4::jsonb ORDER BY"
            ),
            "{}",
            sql.list
        );
        assert!(
            sql.count.contains("jsonb_contains(properties, $3::jsonb)"),
            "{}",
            sql.count
        );
        assert!(!sql.list.contains("x'--"));
        let values: Vec<String> = sql.params[2..4]
            .iter()
            .map(|(p, _)| format!("{p:?}"))
            .collect();
        assert_eq!(
            values,
            [
                r#"Object {"employee_id": Object {"new_value": String("x'--")}}"#,
                r#"String("x'--")"#
            ]
        );
        let sql = list_sql(&parse("attribute_name=employee_id"), Vec::new());
        assert!(
            sql.list
                .contains("AND jsonb_exists(properties, 'employee_id') ORDER BY"),
            "{}",
            sql.list
        );
        // `status`, of `api.indexed_values` by default, has only its value index: alone, the
        // attribute is checked row by row in time order; with a value, named as a literal.
        let q = parse("attribute_name=status");
        assert!(!q.attribute_indexed);
        assert!(list_sql(&q, Vec::new())
            .list
            .contains("jsonb_exists(properties, $3)"));
        let q = parse("attribute_name=status&new_value=APPROVED");
        assert!(q.attribute_indexed);
        assert!(list_sql(&q, Vec::new())
            .list
            .contains("AND properties -> 'status' -> 'new_value' = $4::jsonb ORDER BY"));
        // Without it, as any other attribute.
        let config = ApiConfig {
            indexed_values: Vec::new(),
            ..ApiConfig::default()
        };
        let q = parse_query(
            Some("attribute_name=status&new_value=APPROVED"),
            now(),
            &config,
        )
        .unwrap();
        assert!(!q.attribute_indexed);
        assert!(list_sql(&q, Vec::new())
            .list
            .contains("jsonb_contains(properties, $3::jsonb)"));
    }
}
