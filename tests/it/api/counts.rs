//! `total_entries` comes from the per-minute `event_counts` plus exact counts of the partial
//! minutes at the window's ends. It must equal a plain `count(*)` over `events` for every
//! filter and window shape, after inserts, deletes, updates and truncation.

use chrono::{DateTime, Duration, TimeZone, Utc};
use event_manager::api::events::parse_query;
use event_manager::config::ApiConfig;
use event_manager::store::event_queries::{list_sql, whole_minutes, whole_spans};

use crate::support::fresh_database;

/// 6 000 events at irregular instants over about seven hours, with string, number, nested and
/// non-object attribute values, two event types and three entity types.
const SEED: &str = "
INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, changed_by,
                    source_topic, source_partition, source_offset, source_seq)
SELECT gen_random_uuid(),
       CASE WHEN i % 7 = 0 THEN 'StateChangeEvent' ELSE 'StatusChangeEvent' END,
       (ARRAY['Episode','Encounter','Declaration'])[1 + i % 3],
       'e' || i,
       CASE i % 5
            WHEN 0 THEN jsonb_build_object('status', jsonb_build_object('new_value', 'APPROVED', 'old_value', 'NEW'))
            WHEN 1 THEN jsonb_build_object('status', jsonb_build_object('new_value', 'REJECTED'),
                                           'priority', jsonb_build_object('new_value', i % 3))
            WHEN 2 THEN jsonb_build_object('status', jsonb_build_object('new_value', jsonb_build_array('APPROVED')))
            WHEN 3 THEN jsonb_build_object('status', 'APPROVED', 'note', jsonb_build_object('new_value', NULL))
            ELSE '{}'::jsonb END,
       timestamptz '2024-03-01 08:00:00+00' + (i * 4.1 + (i % 13) * 0.37) * interval '1 second',
       'u', 'seed', 0, i, 0
FROM generate_series(1, 6000) AS i
";

/// 2 000 events from 16:00 whose attributes are mostly watched (they have `old_value`), so
/// `new_value` totals come from `event_value_counts`; one captured `status` at about 16:55 and
/// long `note` values make windows that must be counted from the events instead.
const SEED_WATCHED: &str = "
INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, changed_by,
                    source_topic, source_partition, source_offset, source_seq)
SELECT gen_random_uuid(),
       CASE WHEN i % 7 = 0 THEN 'StateChangeEvent' ELSE 'StatusChangeEvent' END,
       (ARRAY['Episode','Encounter','Declaration'])[1 + i % 3],
       'w' || i,
       CASE WHEN i = 1000 THEN jsonb_build_object('status', jsonb_build_object('new_value', 'APPROVED'))
            ELSE CASE i % 4
            WHEN 0 THEN jsonb_build_object('status', jsonb_build_object('new_value', 'APPROVED', 'old_value', 'NEW'))
            WHEN 1 THEN jsonb_build_object('status', jsonb_build_object('new_value', 'REJECTED', 'old_value', NULL),
                                           'ref', jsonb_build_object('new_value', 'Patient/' || (i % 50), 'old_value', NULL))
            WHEN 2 THEN jsonb_build_object('status', jsonb_build_object('new_value', 'APPROVED', 'old_value', 'REJECTED'),
                                           'note', jsonb_build_object('new_value', repeat('x', 300), 'old_value', NULL))
            ELSE jsonb_build_object('status', jsonb_build_object('new_value', 5, 'old_value', 4)) END END,
       timestamptz '2024-03-01 16:00:00+00' + (i * 3.3 + (i % 11) * 0.29) * interval '1 second',
       'u', 'seed', 1, i, 0
FROM generate_series(1, 2000) AS i
";

const FILTERS: [&str; 13] = [
    "",
    "&event_type=StateChangeEvent",
    "&entity_type=Episode",
    "&event_type=StatusChangeEvent&entity_type=Encounter",
    "&attribute_name=status",
    "&attribute_name=priority",
    "&attribute_name=status&new_value=APPROVED",
    "&attribute_name=status&new_value=REJECTED&entity_type=Declaration",
    "&attribute_name=note&new_value=null",
    "&attribute_name=note&new_value=x",
    "&attribute_name=ref&new_value=Patient/7",
    "&attribute_name=ref&new_value=Patient/7&event_type=StatusChangeEvent&entity_type=Encounter",
    "&attribute_name=status&new_value=5",
];

/// Windows: sub-minute, exactly on minute boundaries, straddling them, and long.
fn windows() -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let t = |h, m, s, micros| {
        Utc.with_ymd_and_hms(2024, 3, 1, h, m, s).unwrap() + Duration::microseconds(micros)
    };
    vec![
        (t(9, 0, 0, 0), t(10, 0, 0, 0)),
        (t(9, 0, 0, 1), t(9, 59, 59, 999_999)),
        (t(9, 13, 27, 250_000), t(10, 13, 26, 0)),
        (t(9, 13, 10, 0), t(9, 13, 50, 0)),
        (t(9, 13, 10, 0), t(9, 14, 50, 0)),
        (t(9, 19, 59, 999_999), t(9, 40, 0, 1)),
        (t(9, 20, 0, 0), t(9, 30, 0, 0)),
        (t(7, 30, 0, 0), t(8, 0, 30, 0)),
        (t(8, 0, 0, 0), t(15, 0, 0, 0)),
        (t(14, 50, 0, 0), t(16, 0, 0, 0)),
        (t(16, 0, 0, 0), t(17, 0, 0, 0)),
        (t(16, 13, 27, 250_000), t(17, 13, 26, 0)),
        (t(16, 20, 0, 0), t(16, 50, 0, 0)),
        (t(16, 20, 10, 0), t(16, 54, 30, 0)),
        (t(17, 0, 0, 0), t(18, 0, 0, 0)),
        // More than half of the end minutes inside: they are counted as the minute's count less
        // the rows outside. Minute 16:55 holds SEED_WATCHED's captured `status` (16:55:02.9),
        // outside the first window and inside the second.
        (t(16, 55, 20, 0), t(17, 25, 45, 0)),
        (t(16, 20, 10, 0), t(16, 55, 40, 0)),
    ]
}

/// The attributes of [`FILTERS`], for `api.indexed_attributes`.
const ATTRIBUTES: [&str; 4] = ["status", "priority", "note", "ref"];

async fn check_all(client: &tokio_postgres::Client, stage: &str) {
    // No attribute indexed, not even `status`'s values (`api.indexed_values`' default).
    let config = ApiConfig {
        events_list_max_period_hours: 48,
        indexed_values: Vec::new(),
        ..ApiConfig::default()
    };
    // The same requests with every attribute indexed: the attribute filters are written
    // differently (a literal name, `->` instead of `@>`) and must select the same events.
    let indexed = ApiConfig {
        indexed_attributes: ATTRIBUTES.map(str::to_owned).to_vec(),
        ..config.clone()
    };
    let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    for (from, to) in windows() {
        for filter in FILTERS {
            for hidden in [Vec::new(), vec!["StateChangeEvent".to_owned()]] {
                let query = format!(
                    "date={}&date_to={}{filter}&page_size=500",
                    fmt(from),
                    fmt(to)
                );
                let expected = exact_count(
                    client,
                    &parse_query(Some(&query), Utc::now(), &config).unwrap(),
                    &hidden,
                )
                .await;
                let mut pages = Vec::new();
                // Read long after the window, and a second after its end, as a request for
                // the present is: its last minute is then counted from the minute's count less
                // the rows after the window, which the seed has (events timed after the
                // request still count).
                let present = to + Duration::seconds(1);
                for (config, now) in [
                    (&config, Utc::now()),
                    (&indexed, Utc::now()),
                    (&config, present),
                    (&indexed, present),
                ] {
                    let q = parse_query(Some(&query), now, config)
                        .unwrap_or_else(|e| panic!("{query}: {e}"));
                    let sql = list_sql(&q, hidden.clone());
                    let total: i64 = client
                        .query_typed(&sql.count, &sql.count_params())
                        .await
                        .unwrap_or_else(|e| panic!("{query}: {e}"))[0]
                        .get(0);
                    assert_eq!(total, expected, "{stage}: {query} hidden {hidden:?}");
                    // The page query carries the same total in its last column.
                    let rows = client
                        .query_typed(&sql.list, &sql.page_params())
                        .await
                        .unwrap_or_else(|e| panic!("{query}: {e}"));
                    if let Some(row) = rows.first() {
                        assert_eq!(row.get::<_, i64>("total"), expected, "{stage}: {query}");
                    }
                    pages.push(
                        rows.iter()
                            .map(|r| r.get::<_, uuid::Uuid>("id"))
                            .collect::<Vec<_>>(),
                    );
                }
                for (i, page) in pages.iter().enumerate().skip(1) {
                    assert_eq!(
                        &pages[0], page,
                        "{stage}: {query} hidden {hidden:?}: indexed attribute or read at the \
                         present ({i})"
                    );
                }
                assert_eq!(pages[0].len() as i64, expected.min(500), "{stage}: {query}");
            }
        }
    }
}

/// The count written independently of the API's SQL, with the JSON operators.
async fn exact_count(
    client: &tokio_postgres::Client,
    q: &event_manager::store::event_queries::EventsQuery,
    hidden: &[String],
) -> i64 {
    use event_manager::store::event_queries::AttributeFilter;
    let (name, contains) = match &q.attribute {
        None => (None, None),
        Some(AttributeFilter::Exists(name)) => (Some(name.clone()), None),
        Some(AttributeFilter::NewValue { name, value }) => (
            None,
            Some(serde_json::json!({ name.clone(): { "new_value": value } })),
        ),
    };
    client
        .query_one(
            "SELECT count(*) FROM events WHERE event_time >= $1 AND event_time < $2 \
               AND ($3::text IS NULL OR event_type = $3) \
               AND ($4::text IS NULL OR entity_type = $4) \
               AND ($5::text IS NULL OR properties ? $5) \
               AND ($6::jsonb IS NULL OR properties @> $6) \
               AND NOT event_type = ANY($7::text[])",
            &[
                &q.from,
                &q.to,
                &q.event_type,
                &q.entity_type,
                &name,
                &contains,
                &hidden,
            ],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn totals_agree_with_a_plain_count_through_every_change() {
    let db = fresh_database().await;
    let client = db.client().await;
    client.batch_execute(SEED).await.unwrap();
    client.batch_execute(SEED_WATCHED).await.unwrap();
    // The partial indexes of every attribute, kept through the changes below (the other test
    // runs the same statements without them).
    let attributes = ATTRIBUTES.map(str::to_owned);
    let report = db
        .store
        .ensure_api_indexes(&attributes, &[], false)
        .await
        .unwrap();
    assert_eq!(report.built.len(), 2 * ATTRIBUTES.len(), "{report:?}");
    // Watched values are counted per value; captured ones and long values are not. Per minute
    // and per ten minutes alike.
    for table in ["event_value_counts", "event_value_counts_10min"] {
        let by_value: i64 = client
            .query_one(
                &format!(
                    "SELECT coalesce(sum(n), 0)::bigint FROM {table} \
                     WHERE attribute = 'status' AND value = 'APPROVED'"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        // SEED: every fifth of 6 000; SEED_WATCHED: half of 2 000, less the captured one.
        assert_eq!(by_value, 1200 + 999, "{table}");
    }
    check_all(&client, "after insert").await;

    // The terminator's way: batches of rows by physical position.
    client
        .batch_execute(
            "DELETE FROM events WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM events WHERE source_offset % 3 = 0 LIMIT 1500))",
        )
        .await
        .unwrap();
    client
        .batch_execute("DELETE FROM events WHERE event_time < '2024-03-01 09:20:00+00'")
        .await
        .unwrap();
    check_all(&client, "after deletes").await;

    client
        .batch_execute(
            "UPDATE events SET entity_type = 'Episode', \
                 properties = properties || '{\"priority\": {\"new_value\": \"high\"}, \
                     \"ref\": {\"new_value\": \"Patient/7\", \"old_value\": null}}' \
             WHERE source_offset % 11 = 0",
        )
        .await
        .unwrap();
    check_all(&client, "after update").await;

    // A minute bucket emptied completely leaves no row behind.
    let empty: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM event_counts WHERE n <= 0) \
                  + (SELECT count(*) FROM event_value_counts WHERE n <= 0)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(empty, 0);

    client.batch_execute("TRUNCATE events").await.unwrap();
    let left: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM event_counts) \
                  + (SELECT count(*) FROM event_value_counts)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    client.batch_execute(SEED).await.unwrap();
    client.batch_execute(SEED_WATCHED).await.unwrap();
    check_all(&client, "after truncate and reload").await;
}

#[test]
fn whole_minutes_lie_inside_the_window_on_minute_boundaries() {
    let t = |h, m, s, micros| {
        Utc.with_ymd_and_hms(2024, 3, 1, h, m, s).unwrap() + Duration::microseconds(micros)
    };
    assert_eq!(
        whole_minutes(t(9, 0, 0, 0), t(10, 0, 0, 0)),
        (t(9, 0, 0, 0), t(10, 0, 0, 0))
    );
    assert_eq!(
        whole_minutes(t(9, 0, 0, 1), t(9, 59, 59, 999_999)),
        (t(9, 1, 0, 0), t(9, 59, 0, 0))
    );
    // No whole minute: everything is counted row by row.
    assert_eq!(
        whole_minutes(t(9, 0, 10, 0), t(9, 1, 50, 0)),
        (t(9, 1, 50, 0), t(9, 1, 50, 0))
    );
    assert_eq!(
        whole_minutes(t(9, 0, 10, 0), t(9, 0, 50, 0)),
        (t(9, 0, 50, 0), t(9, 0, 50, 0))
    );
    let ten = 600_000_000;
    assert_eq!(
        whole_spans(t(9, 14, 0, 0), t(10, 13, 0, 0), ten),
        (t(9, 20, 0, 0), t(10, 10, 0, 0))
    );
    assert_eq!(
        whole_spans(t(9, 14, 0, 0), t(9, 29, 0, 0), ten),
        (t(9, 29, 0, 0), t(9, 29, 0, 0))
    );
}

/// V6 fills in the ten-minute value counts of the events stored before it from their minutes:
/// the same rows as the trigger keeps for events stored after it.
#[tokio::test]
async fn ten_minute_value_counts_back_fill_like_the_trigger() {
    let db = fresh_database().await;
    let client = db.client().await;
    client.batch_execute(SEED).await.unwrap();
    client.batch_execute(SEED_WATCHED).await.unwrap();
    let ten_minute_rows = || async {
        client
            .query(
                "SELECT attribute, value, bucket, event_type, entity_type, n \
                 FROM event_value_counts_10min ORDER BY 1, 2, 3, 4, 5",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, DateTime<Utc>>(2),
                    r.get::<_, String>(3),
                    r.get::<_, String>(4),
                    r.get::<_, i64>(5),
                )
            })
            .collect::<Vec<_>>()
    };
    let by_trigger = ten_minute_rows().await;
    assert!(by_trigger.len() > 10, "{}", by_trigger.len());
    client
        .batch_execute("DELETE FROM event_value_counts_10min")
        .await
        .unwrap();
    let v6 = include_str!("../../../sql/V6__event_value_counts_10min.sql");
    let back_fill = &v6[v6
        .rfind("INSERT INTO event_value_counts_10min")
        .expect("V6 ends with its back-fill")..];
    client.batch_execute(back_fill).await.unwrap();
    assert_eq!(ten_minute_rows().await, by_trigger);
}
