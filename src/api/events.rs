//! `GET /api/events` and `GET /api/events/{id}`: query parsing (pure), SQL, and handlers.
//!
//! Period (ESOZ's `EVENTS_LIST_MAX_PERIOD_HOURS`, docs/architecture.md "ESOZ Event Manager"):
//! the list covers the half-open window `date <= event_time < date_to` — `date` inclusive,
//! `date_to` exclusive, so consecutive windows tile without overlap. Without dates the window is
//! the last period up to now; with one date it is one period from `date` or up to `date_to`;
//! with both their distance may not exceed the period (else 422 with ESOZ's message).
//!
//! Dates are RFC 3339 (`2017-04-20T19:14:13Z`, `…+02:00`; a `+` that the query string decoded to
//! a space is accepted), or without a zone and then UTC (`2017-04-20T19:14:13`,
//! `2017-04-20 19:14:13`, fractions allowed), or a plain date (`2017-04-20`, midnight UTC):
//! exactly what [`DATE_PATTERN`] matches, which the OpenAPI document publishes.
//!
//! Unknown parameters, repeated parameters, empty values and values whose percent-encoded bytes
//! are not UTF-8 are rejected with 422 naming the parameter: a misspelt filter must not silently
//! widen the result, nor a mangled one silently change it.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use utoipa::ToSchema;

use super::auth::Principal;
use super::config::ApiConfig;
use super::error::{ApiError, ErrorBody, InvalidParameter};
use super::ApiState;

/// Largest page number accepted.
pub const MAX_PAGE: u32 = 1_000_000;
/// Longest text filter value accepted, in characters.
pub const MAX_TEXT_LEN: usize = 256;

/// `date` and `date_to`: a calendar date (`YYYY-MM-DD`, only days that exist), optionally a time
/// (`T`, `t` or a space, `HH:MM`, optional `:SS` and 1–9 fraction digits) and a zone (`Z`, `z`
/// or `±HH:MM`, where a space stands for a `+` that arrived unencoded). Without a zone the time
/// is UTC; without a time it is midnight UTC. The OpenAPI document publishes this pattern, so
/// that clients and fuzzers generate exactly the dates the server accepts.
pub const DATE_PATTERN: &str = concat!(
    "^(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])",
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
    "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)",
    "(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,9})?)?",
    "(?:[Zz]|[+ -](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?$",
);

/// Text filters (`event_type`, `entity_type`, `attribute_name`, `new_value`): no control
/// characters (Unicode category Cc), as published in the OpenAPI document; length is bounded
/// separately (1 to [`MAX_TEXT_LEN`] characters).
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// ESOZ's message for a period that is too long (docs/architecture.md, "ESOZ Event Manager").
pub fn period_message(hours: u32) -> String {
    format!(
        "Period must be less than or equal to {hours} hours. Please set allowed period to the query"
    )
}

/// How the list filters on `properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeFilter {
    /// Events whose properties have this attribute.
    Exists(String),
    /// Events whose `properties -> name ->> 'new_value'` equals `value`.
    NewValue {
        /// Attribute name.
        name: String,
        /// Its new value.
        value: String,
    },
}

/// A validated list request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// Window start (inclusive).
    pub from: DateTime<Utc>,
    /// Window end (exclusive).
    pub to: DateTime<Utc>,
    /// `event_type` filter.
    pub event_type: Option<String>,
    /// `entity_type` filter.
    pub entity_type: Option<String>,
    /// `attribute_name` / `new_value` filter.
    pub attribute: Option<AttributeFilter>,
    /// Whether the filtered attribute has its own indexes (`api.indexed_attributes`).
    pub attribute_indexed: bool,
    /// 1-based page number.
    pub page: u32,
    /// Events per page.
    pub page_size: u32,
}

const PARAMETERS: &[&str] = &[
    "date",
    "date_to",
    "event_type",
    "entity_type",
    "attribute_name",
    "new_value",
    "page",
    "page_size",
];

/// Parses and validates the query string of `GET /api/events`, collecting every problem.
pub fn parse_query(
    raw: Option<&str>,
    now: DateTime<Utc>,
    config: &ApiConfig,
) -> Result<EventsQuery, ApiError> {
    let mut invalid = Vec::new();
    let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
    for (key, value) in query_pairs(raw.unwrap_or_default()) {
        let Some(name) = PARAMETERS.iter().copied().find(|p| *p == key) else {
            invalid.push(InvalidParameter::new(
                truncate(&key),
                "unknown parameter (known: date, date_to, event_type, entity_type, \
                 attribute_name, new_value, page, page_size)",
            ));
            continue;
        };
        if values.contains_key(name) {
            invalid.push(InvalidParameter::new(name, "given more than once"));
            continue;
        }
        let Some(value) = value else {
            invalid.push(InvalidParameter::new(
                name,
                "must be UTF-8 (the percent-encoded bytes are not)",
            ));
            values.insert(name, String::new());
            continue;
        };
        if value.is_empty() {
            invalid.push(InvalidParameter::new(name, "must not be empty"));
        } else if value.chars().any(char::is_control) {
            invalid.push(InvalidParameter::new(
                name,
                "must not contain control characters",
            ));
        } else if value.chars().count() > MAX_TEXT_LEN {
            invalid.push(InvalidParameter::new(
                name,
                format!("must be at most {MAX_TEXT_LEN} characters"),
            ));
        }
        values.insert(name, value);
    }
    let failed: std::collections::BTreeSet<String> =
        invalid.iter().map(|p| p.parameter.clone()).collect();
    let get = |name: &str| {
        values
            .get(name)
            .filter(|_| !failed.contains(name))
            .map(String::as_str)
    };

    let mut date = |name: &'static str| {
        get(name).and_then(|v| {
            let parsed = crate::time::parse_query_time(v);
            if parsed.is_none() {
                invalid.push(InvalidParameter::new(
                    name,
                    "must be an RFC 3339 date-time (2017-04-20T19:14:13Z), a UTC date-time \
                     without zone (2017-04-20T19:14:13) or a date (2017-04-20)",
                ));
            }
            parsed
        })
    };
    let date_from = date("date");
    let date_to = date("date_to");

    let mut number = |name: &'static str, max: u32, default: u32| match get(name) {
        None => Some(default),
        Some(v) => match parse_count(v) {
            Some(n) if n <= max => Some(n),
            _ => {
                invalid.push(InvalidParameter::new(
                    name,
                    format!("must be an integer between 1 and {max}"),
                ));
                None
            }
        },
    };
    let page = number("page", MAX_PAGE, 1);
    let page_size = number("page_size", config.max_page_size, config.default_page_size);

    let attribute = match (get("attribute_name"), get("new_value")) {
        (Some(name), None) => Some(AttributeFilter::Exists(name.to_owned())),
        (Some(name), Some(value)) => Some(AttributeFilter::NewValue {
            name: name.to_owned(),
            value: value.to_owned(),
        }),
        (None, Some(_)) if !failed.contains("attribute_name") => {
            invalid.push(InvalidParameter::new(
                "new_value",
                "requires attribute_name",
            ));
            None
        }
        (None, _) => None,
    };

    let period = config.max_period();
    let window = match (
        values.contains_key("date"),
        date_from,
        values.contains_key("date_to"),
        date_to,
    ) {
        (_, Some(from), _, Some(to)) => {
            if from > to {
                invalid.push(InvalidParameter::new("date", "must not be after date_to"));
                None
            } else if to - from > period {
                if invalid.is_empty() {
                    return Err(ApiError::Validation {
                        message: period_message(config.events_list_max_period_hours),
                        invalid: vec![
                            InvalidParameter::new("date", "period"),
                            InvalidParameter::new("date_to", "period"),
                        ],
                    });
                }
                None
            } else {
                Some((from, to))
            }
        }
        (_, Some(from), false, None) => {
            shift(from, period, "date", &mut invalid).map(|to| (from, to))
        }
        (false, None, _, Some(to)) => {
            shift(to, -period, "date_to", &mut invalid).map(|from| (from, to))
        }
        (false, None, false, None) => Some((now - period, now)),
        _ => None, // a given date failed to parse and is already reported
    };

    match (window, page, page_size) {
        (Some((from, to)), Some(page), Some(page_size)) if invalid.is_empty() => Ok(EventsQuery {
            from,
            to,
            event_type: get("event_type").map(str::to_owned),
            entity_type: get("entity_type").map(str::to_owned),
            attribute_indexed: attribute.as_ref().is_some_and(|a| {
                config.is_indexed(match a {
                    AttributeFilter::Exists(name) | AttributeFilter::NewValue { name, .. } => name,
                })
            }),
            attribute,
            page,
            page_size,
        }),
        _ => {
            let names: Vec<&str> = invalid.iter().map(|p| p.parameter.as_str()).collect();
            Err(ApiError::Validation {
                message: format!("invalid query parameters: {}", names.join(", ")),
                invalid,
            })
        }
    }
}

/// The `name=value` pairs of a query string (`application/x-www-form-urlencoded`: `+` is a
/// space, `%XX` a byte). A value whose bytes are not UTF-8 is `None`: replacing them with U+FFFD
/// would answer a different question than the one asked. Names are only compared, so lossy.
fn query_pairs(raw: &str) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    fn decode(s: &str) -> Vec<u8> {
        percent_encoding::percent_decode(s.replace('+', " ").as_bytes()).collect()
    }
    raw.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (
            String::from_utf8_lossy(&decode(name)).into_owned(),
            String::from_utf8(decode(value)).ok(),
        )
    })
}

fn shift(
    at: DateTime<Utc>,
    by: chrono::Duration,
    name: &str,
    invalid: &mut Vec<InvalidParameter>,
) -> Option<DateTime<Utc>> {
    let shifted = at.checked_add_signed(by);
    if shifted.is_none() {
        invalid.push(InvalidParameter::new(name, "out of range"));
    }
    shifted
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Writes the rules [`parse_query`] enforces into the OpenAPI operation of `GET /api/events`:
/// per parameter as JSON Schema (length, pattern, bounds, with `api.max_page_size` and
/// `api.default_page_size` as configured), and the rules between parameters, which JSON Schema
/// cannot state, in the descriptions. Generated clients and fuzzers then send what the server
/// accepts.
pub fn document_list_rules(operation: &mut serde_json::Value, config: &ApiConfig) {
    use serde_json::json;
    let hours = config.events_list_max_period_hours;
    let date_grammar = "a date `2017-04-20` (midnight UTC), or a date and time \
        `2017-04-20T19:14:13` (also `t` or a space for `T`; seconds and 1-9 fraction digits \
        optional) in UTC, or with a zone `Z` or `+02:00` (a space for an unencoded `+`)";
    let text = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_TEXT_LEN,
        "pattern": TEXT_PATTERN,
    });
    let text_rule = format!("1 to {MAX_TEXT_LEN} characters, no control characters.");
    let rules: [(&str, String, serde_json::Value); 8] = [
        (
            "date",
            format!(
                "Window start, inclusive: {date_grammar}. Not after `date_to`; at most {hours} \
                 hours (`api.events_list_max_period_hours`) before it. Without `date_to` the \
                 window is {hours} hours from `date`."
            ),
            json!({"type": "string", "pattern": DATE_PATTERN}),
        ),
        (
            "date_to",
            format!(
                "Window end, exclusive, in the same formats as `date`. Without `date` the \
                 window is {hours} hours up to `date_to`; without both, the last {hours} hours."
            ),
            json!({"type": "string", "pattern": DATE_PATTERN}),
        ),
        (
            "event_type",
            format!("Only this event type. {text_rule}"),
            text.clone(),
        ),
        (
            "entity_type",
            format!("Only this entity type. {text_rule}"),
            text.clone(),
        ),
        (
            "attribute_name",
            format!("Only events whose properties have this attribute. {text_rule}"),
            text.clone(),
        ),
        (
            "new_value",
            format!(
                "Only events where the attribute `attribute_name` has this `new_value`; \
                 only together with `attribute_name`. {text_rule}"
            ),
            text,
        ),
        (
            "page",
            "Page number, from 1 (decimal digits, no sign or leading zero).".into(),
            json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}),
        ),
        (
            "page_size",
            format!(
                "Events per page, at most `api.max_page_size` (here {}), default \
                 `api.default_page_size` (decimal digits, no sign or leading zero).",
                config.max_page_size
            ),
            json!({"type": "integer", "minimum": 1, "maximum": config.max_page_size,
                   "default": config.default_page_size}),
        ),
    ];
    if let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(serde_json::Value::as_array_mut)
    {
        for parameter in parameters {
            let name = parameter.get("name").and_then(serde_json::Value::as_str);
            if let Some((_, description, schema)) = rules.iter().find(|(n, ..)| Some(*n) == name) {
                parameter["description"] = json!(description);
                parameter["schema"] = schema.clone();
            }
        }
    }
    operation["description"] = json!(format!(
        "Events of the window `date <= event_time < date_to`, ordered by `event_time`, then \
         `id`. Every rule of the parameters is checked, and a request that breaks any is 422 \
         naming each offending parameter: also unknown parameters (a misspelt filter never \
         widens the result), a parameter given twice, percent-encoded bytes that are not \
         UTF-8, `new_value` without `attribute_name`, `date` after `date_to`, and `date` and \
         `date_to` more than {hours} hours apart. Events of a type whose scope \
         (`auth.event_type_scopes`) the token lacks are left out, and asking for such a type \
         with `event_type` is 403."
    ));
}

/// A page number or size: decimal digits without sign or leading zero, at least 1.
fn parse_count(s: &str) -> Option<u32> {
    let plain = s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    s.parse().ok().filter(|_| plain)
}

/// One event, exactly as stored.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EventView {
    /// Event identifier (UUID v7).
    pub id: uuid::Uuid,
    /// Event type, e.g. `StatusChangeEvent`.
    pub event_type: String,
    /// Type of the changed entity, e.g. `EmployeeRequest`.
    pub entity_type: String,
    /// Identifier of the changed entity.
    pub entity_id: String,
    /// What changed: `{attribute: {new_value, old_value}}`.
    #[schema(value_type = Object)]
    pub properties: serde_json::Value,
    /// When the change happened (RFC 3339, UTC).
    pub event_time: DateTime<Utc>,
    /// Who made the change, when known.
    pub changed_by: Option<String>,
}

/// A JSON document borrowed from a row, as PostgreSQL sent it: `jsonb` output is always valid
/// JSON, so it is copied into a response as it is, without parsing it again.
struct RawJsonRef<'a>(&'a str);

impl<'a> tokio_postgres::types::FromSql<'a> for RawJsonRef<'a> {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = match (ty == &Type::JSONB, raw.split_first()) {
            (false, _) => raw,
            (true, Some((1, text))) => text,
            (true, _) => return Err("unsupported jsonb format version".into()),
        };
        Ok(RawJsonRef(std::str::from_utf8(text)?))
    }

    tokio_postgres::types::accepts!(JSON, JSONB);
}

/// Writes JSON response bodies straight from the driver's row buffers: the same JSON that
/// serialising an [`EventList`] or [`EventEnvelope`] gives (checked in tests), without building
/// one first. Strings are escaped by serde_json; ids, timestamps and `properties` (valid JSON
/// from PostgreSQL) need no escaping and are written directly.
struct BodyWriter {
    out: Vec<u8>,
}

impl BodyWriter {
    fn with_capacity(events: usize) -> Self {
        Self {
            out: Vec::with_capacity(128 + events * 384),
        }
    }

    fn raw(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
    }

    fn string(&mut self, s: &str) {
        serde_json::to_writer(&mut self.out, s).expect("writing into a Vec does not fail");
    }

    /// One row of [`COLUMNS`] as an [`EventView`] object.
    fn event(&mut self, row: &Row) -> Result<(), tokio_postgres::Error> {
        let id: uuid::Uuid = row.try_get(0)?;
        let event_type: &str = row.try_get(1)?;
        let entity_type: &str = row.try_get(2)?;
        let entity_id: &str = row.try_get(3)?;
        let properties: RawJsonRef<'_> = row.try_get(4)?;
        let event_time: DateTime<Utc> = row.try_get(5)?;
        let changed_by: Option<&str> = row.try_get(6)?;
        self.raw("{\"id\":\"");
        self.raw(
            id.hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
        self.raw("\",\"event_type\":");
        self.string(event_type);
        self.raw(",\"entity_type\":");
        self.string(entity_type);
        self.raw(",\"entity_id\":");
        self.string(entity_id);
        self.raw(",\"properties\":");
        self.raw(properties.0);
        self.raw(",\"event_time\":\"");
        write_timestamp(&mut self.out, event_time);
        self.raw("\",\"changed_by\":");
        match changed_by {
            Some(by) => self.string(by),
            None => self.raw("null"),
        }
        self.raw("}");
        Ok(())
    }

    /// A list response: `{"data": [events], "paging": {…}}`.
    fn list(rows: &[Row], paging: &Paging) -> Result<Vec<u8>, tokio_postgres::Error> {
        let mut w = Self::with_capacity(rows.len());
        w.raw("{\"data\":[");
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                w.raw(",");
            }
            w.event(row)?;
        }
        w.raw("],\"paging\":");
        serde_json::to_writer(&mut w.out, paging).expect("writing into a Vec does not fail");
        w.raw("}");
        Ok(w.out)
    }

    /// A get response: `{"data": event}`.
    fn envelope(row: &Row) -> Result<Vec<u8>, tokio_postgres::Error> {
        let mut w = Self::with_capacity(1);
        w.raw("{\"data\":");
        w.event(row)?;
        w.raw("}");
        Ok(w.out)
    }
}

/// Appends `t` as chrono's serde format writes it (RFC 3339 in UTC with `Z`, and 0, 3, 6 or 9
/// fraction digits as the value needs), e.g. `2017-04-20T19:14:13.123456Z`.
fn write_timestamp(out: &mut Vec<u8>, t: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside four-digit years (beyond what events carry), chrono writes it.
        out.extend_from_slice(
            serde_json::to_string(&t)
                .expect("a timestamp serialises")
                .trim_matches('"')
                .as_bytes(),
        );
        return;
    }
    fn digits(out: &mut Vec<u8>, value: u32, width: u32) {
        for k in (0..width).rev() {
            out.push(b'0' + (value / 10_u32.pow(k) % 10) as u8);
        }
    }
    digits(out, year as u32, 4);
    out.push(b'-');
    digits(out, t.month(), 2);
    out.push(b'-');
    digits(out, t.day(), 2);
    out.push(b'T');
    digits(out, t.hour(), 2);
    out.push(b':');
    digits(out, t.minute(), 2);
    out.push(b':');
    // A leap second is nanosecond ≥ 1 000 000 000 in chrono, written as second 60.
    let nanos = t.nanosecond();
    let (second, nanos) = if nanos >= 1_000_000_000 {
        (t.second() + 1, nanos - 1_000_000_000)
    } else {
        (t.second(), nanos)
    };
    digits(out, second, 2);
    if nanos == 0 {
    } else if nanos % 1_000_000 == 0 {
        out.push(b'.');
        digits(out, nanos / 1_000_000, 3);
    } else if nanos % 1_000 == 0 {
        out.push(b'.');
        digits(out, nanos / 1_000, 6);
    } else {
        out.push(b'.');
        digits(out, nanos, 9);
    }
    out.push(b'Z');
}

/// A JSON response body.
fn json_response(body: Result<Vec<u8>, tokio_postgres::Error>) -> Result<Response, ApiError> {
    let bytes = body.map_err(|e| {
        tracing::error!(error = %e, "writing a response from event rows failed");
        ApiError::Internal
    })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response())
}

/// Paging facts of a list response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Paging {
    /// This page (1-based).
    pub page_number: u32,
    /// Events per page.
    pub page_size: u32,
    /// Events matching the filters in the whole window.
    pub total_entries: i64,
    /// Pages needed for all of them.
    pub total_pages: i64,
}

/// `GET /api/events` response.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EventList {
    /// Events ordered by `event_time`, then `id`.
    pub data: Vec<EventView>,
    /// Paging.
    pub paging: Paging,
}

/// `GET /api/events/{id}` response (the same envelope as the list).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EventEnvelope {
    /// The event.
    pub data: EventView,
}

const COLUMNS: &str = "id, event_type, entity_type, entity_id, properties, event_time, changed_by";
/// The page query's column after [`COLUMNS`]: the window's total.
const TOTAL_COLUMN: usize = 7;

/// Windows up to this long are read through the time-range B-tree, with the attribute filters
/// checked per row. PostgreSQL has no statistics on JSON keys and assumes `?` and `@>` match
/// 0.1 % of rows, so for a common attribute (`status`) it would otherwise read the whole GIN
/// posting list (measured: 350 ms instead of 9 ms per request on 2 M events at the default
/// one-hour period). Longer windows (a raised `events_list_max_period_hours`) keep the
/// operators, so that rare attributes and values are found through the GIN indexes of V3.
/// Attributes of `api.indexed_attributes` have partial indexes of their own, used in any window
/// (`store::attribute_indexes`).
const TIME_FIRST_WINDOW_HOURS: i64 = 24;

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
/// (GIN `jsonb_path_ops`) and `properties ? name` (GIN `jsonb_ops`).
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
    if let Some(t) = &q.event_type {
        let clause = " AND event_type = $?";
        push(
            &mut f,
            (clause, clause, clause),
            Box::new(t.clone()),
            Type::TEXT,
        );
    }
    if let Some(t) = &q.entity_type {
        let clause = " AND entity_type = $?";
        push(
            &mut f,
            (clause, clause, clause),
            Box::new(t.clone()),
            Type::TEXT,
        );
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
/// window holds a whole minute, whatever the window's length. With `new_value` it sums the
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
    let whole = lo < hi;
    let half = chrono::Duration::seconds(30);
    let first_minute_n = (whole && lo - q.from > half).then(|| {
        push(
            Box::new(lo - chrono::Duration::minutes(1)),
            Type::TIMESTAMPTZ,
        )
    });
    let after_last_n = (whole && q.to - hi > half).then(|| {
        push(
            Box::new(hi + chrono::Duration::minutes(1)),
            Type::TIMESTAMPTZ,
        )
    });
    let rows = |from: &str, to: &str| {
        format!(
            "(SELECT count(*) FROM events WHERE event_time >= {from} AND event_time < {to}{edges})"
        )
    };
    // The count tables to sum (each a `FROM` source with its key condition), and for values
    // the attribute whose uncounted occurrences make the events themselves the total.
    let (lo10, hi10) = whole_spans(lo, hi, TEN_MINUTES);
    let (ten_minutes, minutes, lo10_n, hi10_n, uncounted_attribute_n) = match f.total {
        TotalFrom::Counts(kind, attribute) => {
            let kind_n = push(Box::new(kind), Type::INT2);
            let attribute_n = push(Box::new(attribute), Type::TEXT);
            let lo10_n = push(Box::new(lo10), Type::TIMESTAMPTZ);
            let hi10_n = push(Box::new(hi10), Type::TIMESTAMPTZ);
            let kind10_n = push(Box::new(kind + 10), Type::INT2);
            (
                format!("event_counts WHERE kind = ${kind10_n} AND attribute = ${attribute_n}"),
                format!("event_counts WHERE kind = ${kind_n} AND attribute = ${attribute_n}"),
                lo10_n,
                hi10_n,
                None,
            )
        }
        TotalFrom::Values(attribute, value) => {
            let attribute_n = push(Box::new(attribute), Type::TEXT);
            let value_n = push(Box::new(value), Type::TEXT);
            let lo10_n = push(Box::new(lo10), Type::TIMESTAMPTZ);
            let hi10_n = push(Box::new(hi10), Type::TIMESTAMPTZ);
            let key = format!("attribute = ${attribute_n} AND value = ${value_n}");
            (
                format!("event_value_counts_10min WHERE {key}"),
                format!("event_value_counts WHERE {key}"),
                lo10_n,
                hi10_n,
                Some(attribute_n),
            )
        }
    };
    let sum = |source: &str, buckets: String| {
        format!("coalesce((SELECT sum(n) FROM {source} AND {buckets}{counts}), 0)::bigint")
    };
    // The two end minutes (see above).
    let minute_count = |bucket_n: usize| sum(&minutes, format!("bucket = ${bucket_n}"));
    let first_edge = match first_minute_n {
        Some(m) => format!("({} - {})", minute_count(m), rows(&format!("${m}"), "$1")),
        None => rows("$1", &format!("${lo_n}")),
    };
    let last_edge = match after_last_n {
        Some(m) => format!(
            "({} - {})",
            minute_count(hi_n),
            rows("$2", &format!("${m}"))
        ),
        None => rows(&format!("${hi_n}"), "$2"),
    };
    let counted = format!(
        "{} + {} + {} + {first_edge} + {last_edge}",
        sum(
            &ten_minutes,
            format!("bucket >= ${lo10_n} AND bucket < ${hi10_n}")
        ),
        sum(
            &minutes,
            format!("bucket >= ${lo_n} AND bucket < ${lo10_n}")
        ),
        sum(
            &minutes,
            format!("bucket >= ${hi10_n} AND bucket < ${hi_n}")
        ),
    );
    let total = match uncounted_attribute_n {
        None => counted,
        Some(attribute_n) => {
            // The minutes whose per-value counts are used, edges counted from theirs included.
            let uncounted_from = first_minute_n.unwrap_or(lo_n);
            let uncounted_to = after_last_n.unwrap_or(hi_n);
            // Sub-selects run when their branch is taken, so a window without uncounted
            // occurrences never reads its events for the total.
            format!(
                "CASE WHEN EXISTS (SELECT FROM event_counts \
                     WHERE kind = 3 AND attribute = ${attribute_n} \
                       AND bucket >= ${uncounted_from} AND bucket < ${uncounted_to}{counts}) \
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

type Values<'a> = Vec<&'a (dyn ToSql + Sync)>;

fn split<'a>(params: &[(&'a (dyn ToSql + Sync), Type)]) -> (Values<'a>, Vec<Type>) {
    params.iter().map(|(v, t)| (*v, t.clone())).unzip()
}

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

    /// Runs the page query.
    async fn page(&self, client: &mut deadpool_postgres::Client) -> Result<Vec<Row>, ApiError> {
        let params = self.page_params();
        if !self.prepared_list {
            // Planned for these values (the pool's connections default to generic plans).
            let tx = client.transaction().await?;
            tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
                .await?;
            let rows = tx.query_typed(&self.list, &params).await?;
            tx.commit().await?;
            return Ok(rows);
        }
        let (values, types) = split(&params);
        let stmt = client.prepare_typed_cached(&self.list, &types).await?;
        Ok(client.query(&stmt, &values).await?)
    }

    /// Runs the count query: always prepared, its plan does not depend on the values.
    async fn total(&self, client: &deadpool_postgres::Client) -> Result<i64, ApiError> {
        let params = self.count_params();
        let (values, types) = split(&params);
        let stmt = client.prepare_typed_cached(&self.count, &types).await?;
        Ok(client.query_one(&stmt, &values).await?.get(0))
    }
}

/// Lists events.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    params(
        // Their rules and descriptions are written by `document_list_rules`.
        ("date" = Option<String>, Query),
        ("date_to" = Option<String>, Query),
        ("event_type" = Option<String>, Query),
        ("entity_type" = Option<String>, Query),
        ("attribute_name" = Option<String>, Query),
        ("new_value" = Option<String>, Query),
        ("page" = Option<u32>, Query),
        ("page_size" = Option<u32>, Query),
    ),
    responses(
        (status = 200, description = "A page of events.", body = EventList),
        (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
        (status = 403, description = "The token lacks `event:read` or the event type's scope.", body = ErrorBody),
        (status = 422, description = "Invalid query parameters.", body = ErrorBody),
        (status = 503, description = "The event database is unavailable.", body = ErrorBody),
    ),
    security(("bearer" = ["event:read"]))
)]
pub async fn list_events(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(raw.as_deref(), Utc::now(), &state.api)?;
    if let Some(scope) = q
        .event_type
        .as_deref()
        .and_then(|t| state.auth.event_type_scope(t))
    {
        if !principal.has_scope(scope) {
            return Err(ApiError::InsufficientScope {
                scope: scope.to_owned(),
            });
        }
    }
    let sql = list_sql(&q, state.auth.hidden_event_types(&principal));
    let mut client = state.store.api_client().await?;
    let rows = sql.page(&mut client).await?;
    let total_entries = match rows.first() {
        Some(row) => row.try_get(TOTAL_COLUMN)?,
        // An empty first page means an empty window; past the end, the total is asked for.
        None if sql.offset == 0 => 0,
        None => sql.total(&client).await?,
    };
    let page_size = i64::from(q.page_size);
    let paging = Paging {
        page_number: q.page,
        page_size: q.page_size,
        total_entries,
        total_pages: (total_entries + page_size - 1) / page_size,
    };
    json_response(BodyWriter::list(&rows, &paging))
}

/// Gets one event. Unknown and malformed ids, and events of a type the token may not see, are 404.
#[utoipa::path(
    get,
    path = "/api/events/{id}",
    tag = "events",
    params(("id" = uuid::Uuid, Path, description = "Event id (a UUID; anything else is 404).")),
    responses(
        (status = 200, description = "The event.", body = EventEnvelope),
        (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
        (status = 403, description = "The token lacks `event:read`.", body = ErrorBody),
        (status = 404, description = "No such event (or not visible to this token).", body = ErrorBody),
        (status = 503, description = "The event database is unavailable.", body = ErrorBody),
    ),
    security(("bearer" = ["event:read"]))
)]
pub async fn get_event(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: uuid::Uuid = id.parse().map_err(|_| ApiError::NotFound)?;
    let client = state.store.api_client().await?;
    let stmt = client
        .prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE id = $1"))
        .await?;
    let row = client
        .query_opt(&stmt, &[&id])
        .await?
        .ok_or(ApiError::NotFound)?;
    let event_type: &str = row.try_get(1)?;
    if state
        .auth
        .event_type_scope(event_type)
        .is_some_and(|scope| !principal.has_scope(scope))
    {
        return Err(ApiError::NotFound);
    }
    json_response(BodyWriter::envelope(&row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    fn timestamp_text(t: DateTime<Utc>) -> String {
        let mut out = Vec::new();
        write_timestamp(&mut out, t);
        String::from_utf8(out).unwrap()
    }

    proptest! {
        /// Timestamps are written exactly as chrono's serde impl writes them, for every
        /// precision (PostgreSQL's microseconds, and the rest too) and year.
        #[test]
        fn timestamps_are_written_like_chrono_writes_them(
            secs in -62_135_596_800_i64..253_402_300_800,
            nanos in prop_oneof![
                Just(0_u32),
                (0_u32..1_000).prop_map(|ms| ms * 1_000_000),
                (0_u32..1_000_000).prop_map(|us| us * 1_000),
                0_u32..1_000_000_000,
            ],
            far in proptest::option::weighted(0.05, -8_000_000_000_000_i64..8_000_000_000_000),
        ) {
            let t = DateTime::<Utc>::from_timestamp(far.unwrap_or(secs), nanos).unwrap();
            let chrono = serde_json::to_string(&t).unwrap();
            prop_assert_eq!(format!("\"{}\"", timestamp_text(t)), chrono);
        }
    }

    #[test]
    fn timestamp_edges() {
        for t in [
            DateTime::<Utc>::from_timestamp(0, 0).unwrap(),
            DateTime::<Utc>::from_timestamp(-62_135_596_800, 0).unwrap(),
            DateTime::<Utc>::from_timestamp(253_402_300_799, 999_999_999).unwrap(),
            DateTime::<Utc>::from_timestamp(1_483_228_799, 1_500_000_000).unwrap(),
            Utc.with_ymd_and_hms(2017, 4, 20, 19, 14, 13).unwrap()
                + chrono::Duration::microseconds(123_456),
        ] {
            let chrono = serde_json::to_string(&t).unwrap();
            assert_eq!(format!("\"{}\"", timestamp_text(t)), chrono);
        }
        assert_eq!(
            timestamp_text(
                Utc.with_ymd_and_hms(2017, 4, 20, 19, 14, 13).unwrap()
                    + chrono::Duration::microseconds(123_456)
            ),
            "2017-04-20T19:14:13.123456Z"
        );
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    fn parse(q: &str) -> Result<EventsQuery, ApiError> {
        parse_query(Some(q), now(), &ApiConfig::default())
    }

    fn invalid_params(q: &str) -> Vec<String> {
        match parse(q) {
            Err(ApiError::Validation { invalid, .. }) => {
                invalid.into_iter().map(|p| p.parameter).collect()
            }
            other => panic!("{q}: expected a validation error, got {other:?}"),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        crate::time::parse_query_time(s).unwrap()
    }

    static DATE_REGEX: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(DATE_PATTERN).unwrap());

    #[test]
    fn no_dates_is_the_last_period() {
        let q = parse_query(None, now(), &ApiConfig::default()).unwrap();
        assert_eq!((q.from, q.to), (now() - chrono::Duration::hours(1), now()));
        assert_eq!((q.page, q.page_size), (1, 50));
        assert_eq!(q.attribute, None);
    }

    #[test]
    fn one_date_is_one_period_from_or_to_it() {
        let q = parse("date=2024-01-01T10:00:00Z").unwrap();
        assert_eq!(
            (q.from, q.to),
            (t("2024-01-01T10:00:00Z"), t("2024-01-01T11:00:00Z"))
        );
        let q = parse("date_to=2024-01-01T10:00:00Z").unwrap();
        assert_eq!(
            (q.from, q.to),
            (t("2024-01-01T09:00:00Z"), t("2024-01-01T10:00:00Z"))
        );
        let config = ApiConfig {
            events_list_max_period_hours: 24,
            ..ApiConfig::default()
        };
        let q = parse_query(Some("date=2024-01-01"), now(), &config).unwrap();
        assert_eq!(
            (q.from, q.to),
            (t("2024-01-01T00:00:00Z"), t("2024-01-02T00:00:00Z"))
        );
    }

    #[test]
    fn both_dates_within_the_period() {
        let q = parse("date=2024-01-01T10:00:00Z&date_to=2024-01-01T11:00:00Z").unwrap();
        assert_eq!(q.to - q.from, chrono::Duration::hours(1));
        match parse("date=2024-01-01T10:00:00Z&date_to=2024-01-01T11:00:01Z") {
            Err(ApiError::Validation { message, invalid }) => {
                assert_eq!(
                    message,
                    "Period must be less than or equal to 1 hours. Please set allowed period to the query"
                );
                assert_eq!(invalid.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            invalid_params("date=2024-01-01T11:00:00Z&date_to=2024-01-01T10:00:00Z"),
            ["date"]
        );
    }

    #[test]
    fn an_encoded_plus_survives_the_query_string_decoding() {
        let q = parse("date=2017-04-20T21%3A14%3A13%2B02%3A00").unwrap();
        assert_eq!(q.from, t("2017-04-20T19:14:13Z"));
    }

    proptest! {
        /// Every date the published pattern admits is one the server reads, and the server
        /// reads no other: the OpenAPI document and the parser cannot drift apart.
        #[test]
        fn the_date_pattern_is_what_the_parser_accepts(
            s in "[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,10})?)?([Zz]|[+ -][0-9]{2}:[0-9]{2})?)?"
        ) {
            prop_assert_eq!(DATE_REGEX.is_match(&s), crate::time::parse_query_time(&s).is_some(), "{}", s);
        }
    }

    #[test]
    fn the_date_pattern_admits_exactly_the_calendar_days() {
        for year in [
            0, 4, 100, 400, 1900, 1996, 2000, 2023, 2024, 2100, 9996, 9999,
        ] {
            for month in 0..=13 {
                for day in 0..=32 {
                    let s = format!("{year:04}-{month:02}-{day:02}");
                    let real = NaiveDate::from_ymd_opt(year, month, day).is_some();
                    assert_eq!(DATE_REGEX.is_match(&s), real, "{s}");
                    assert_eq!(crate::time::parse_query_time(&s).is_some(), real, "{s}");
                }
            }
        }
    }

    #[test]
    fn the_text_pattern_is_the_control_character_rule() {
        let pattern = regex::Regex::new(TEXT_PATTERN).unwrap();
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(
                pattern.is_match(c.encode_utf8(&mut [0; 4])),
                !c.is_control(),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn attribute_filters() {
        assert_eq!(
            parse("attribute_name=status").unwrap().attribute,
            Some(AttributeFilter::Exists("status".into()))
        );
        assert_eq!(
            parse("attribute_name=status&new_value=APPROVED")
                .unwrap()
                .attribute,
            Some(AttributeFilter::NewValue {
                name: "status".into(),
                value: "APPROVED".into()
            })
        );
        assert_eq!(invalid_params("new_value=APPROVED"), ["new_value"]);
    }

    #[test]
    fn paging_bounds() {
        let q = parse("page=3&page_size=500").unwrap();
        assert_eq!((q.page, q.page_size), (3, 500));
        for bad in [
            "page=0",
            "page=-1",
            "page=x",
            "page=1.5",
            "page=99999999999",
            "page=1000001",
        ] {
            assert_eq!(invalid_params(bad), ["page"], "{bad}");
        }
        for bad in ["page=%2B3", "page=03", "page=3%20", "page=%203", "page=3e0"] {
            assert_eq!(invalid_params(bad), ["page"], "{bad}");
        }
        for bad in ["page_size=0", "page_size=501", "page_size=ten"] {
            assert_eq!(invalid_params(bad), ["page_size"], "{bad}");
        }
    }

    #[test]
    fn unknown_repeated_empty_and_control_values_are_rejected() {
        assert_eq!(invalid_params("event-type=x"), ["event-type"]);
        assert_eq!(invalid_params("page=1&page=2"), ["page"]);
        assert_eq!(invalid_params("event_type="), ["event_type"]);
        assert_eq!(invalid_params("event_type=a%00b"), ["event_type"]);
        let long = "x".repeat(MAX_TEXT_LEN + 1);
        assert_eq!(
            invalid_params(&format!("entity_type={long}")),
            ["entity_type"]
        );
        // Percent-encoded bytes must be UTF-8; they are never replaced by U+FFFD.
        for bad in [
            "%ff%fe",
            "%c0%80",
            "%ed%a0%80",
            "a%80",
            "%f4%90%80%80",
            "%e2%82",
        ] {
            assert_eq!(
                invalid_params(&format!("event_type={bad}")),
                ["event_type"],
                "{bad}"
            );
        }
        assert_eq!(
            parse("event_type=%C3%BC%EF%BF%BD+x")
                .unwrap()
                .event_type
                .as_deref(),
            Some("ü\u{fffd} x")
        );
        // Every problem is reported at once.
        assert_eq!(
            invalid_params("page=0&page_size=0&date=nope&new_value=x"),
            ["date", "page", "page_size", "new_value"]
        );
    }

    #[test]
    fn sql_uses_numbered_parameters_only() {
        let q = parse("event_type=a&entity_type=b&attribute_name=status&new_value=x'--").unwrap();
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
        // the filters, limit and offset, then the whole minutes, attribute, value and the whole
        // 10-minute spans.
        assert_eq!(sql.params.len(), 14);
        assert!(
            sql.count.contains(
                "EXISTS (SELECT FROM event_counts WHERE kind = 3 AND attribute = $11 \
                 AND bucket >= $9 AND bucket < $10"
            ) && sql.count.contains(
                "THEN (SELECT count(*) FROM events WHERE event_time >= $1 AND event_time < $2"
            ) && sql.count.contains(
                "FROM event_value_counts_10min WHERE attribute = $11 AND value = $12 \
                       AND bucket >= $13 AND bucket < $14"
            ) && sql.count.contains(
                "FROM event_value_counts WHERE attribute = $11 AND value = $12 \
                       AND bucket >= $9 AND bucket < $13"
            ),
            "{}",
            sql.count
        );
        // Otherwise both take the filters, limit and offset, then the whole minutes, the count
        // key and the whole 10-minute spans.
        let q = parse("event_type=a&entity_type=b&attribute_name=status").unwrap();
        let sql = list_sql(&q, vec!["Hidden".into()]);
        assert_eq!(sql.params.len(), 15);
        for statement in [&sql.count, &sql.list] {
            assert!(
                statement.contains("kind = $11 AND attribute = $12 AND bucket")
                    && statement.contains("kind = $15 AND attribute = $12")
                    && statement.contains("bucket >= $13 AND bucket < $14")
                    && statement.contains("bucket >= $9 AND bucket < $13")
                    && statement.contains("bucket >= $14 AND bucket < $10"),
                "{statement}"
            );
        }
        let q = parse("attribute_name=status&page=3&page_size=20").unwrap();
        let sql = list_sql(&q, Vec::new());
        assert!(
            sql.count.contains("jsonb_exists(properties, $3)"),
            "{}",
            sql.count
        );
        assert_eq!((sql.limit, sql.offset), (20, 40));
        // Windows longer than a day keep the operators the GIN indexes serve.
        let mut long = parse("attribute_name=status&new_value=x").unwrap();
        long.from = long.to - chrono::Duration::hours(25);
        let sql = list_sql(&long, Vec::new());
        assert!(sql.list.contains("properties @> $3::jsonb"), "{}", sql.list);
        assert!(
            sql.count.contains("properties @> $3::jsonb"),
            "{}",
            sql.count
        );
        // The partial minutes at the ends of a counted total are few rows: checked row by row.
        let mut long = parse("attribute_name=status").unwrap();
        long.from = long.to - chrono::Duration::hours(25);
        let sql = list_sql(&long, Vec::new());
        assert!(sql.list.contains("properties ? $3"), "{}", sql.list);
        assert!(
            sql.count.contains("jsonb_exists(properties, $3)"),
            "{}",
            sql.count
        );
    }

    #[test]
    fn indexed_attributes_are_named_as_literals() {
        let config = ApiConfig {
            indexed_attributes: vec!["employee_id".into()],
            ..ApiConfig::default()
        };
        let parse = |q: &str| parse_query(Some(q), now(), &config).unwrap();
        let q = parse("attribute_name=employee_id&new_value=x'--");
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
        // Other attributes are unchanged.
        let q = parse("attribute_name=status");
        assert!(!q.attribute_indexed);
        assert!(list_sql(&q, Vec::new())
            .list
            .contains("jsonb_exists(properties, $3)"));
    }
}
