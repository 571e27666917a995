//! The JSON bodies of the events API: their documented types, and the writer that produces the
//! same JSON straight from the rows the store read.

use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::error::ApiError;
use crate::store::event_queries::{EventRow, StoredEvent};
use crate::store::StoreError;

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

/// Writes JSON response bodies straight from the driver's row buffers: the same JSON that
/// serialising an [`EventList`] or [`EventEnvelope`] gives (checked in tests), without building
/// one first. Strings are escaped by serde_json; ids, timestamps and `properties` (valid JSON
/// from PostgreSQL) need no escaping and are written directly.
pub(super) struct BodyWriter {
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

    /// One event as an [`EventView`] object.
    fn event(&mut self, event: &StoredEvent<'_>) {
        self.raw("{\"id\":\"");
        self.raw(
            event
                .id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer()),
        );
        self.raw("\",\"event_type\":");
        self.string(event.event_type);
        self.raw(",\"entity_type\":");
        self.string(event.entity_type);
        self.raw(",\"entity_id\":");
        self.string(event.entity_id);
        self.raw(",\"properties\":");
        self.raw(event.properties);
        self.raw(",\"event_time\":\"");
        write_timestamp(&mut self.out, event.event_time);
        self.raw("\",\"changed_by\":");
        match event.changed_by {
            Some(by) => self.string(by),
            None => self.raw("null"),
        }
        self.raw("}");
    }

    /// A list response: `{"data": [events], "paging": {…}}`.
    pub(super) fn list(rows: &[EventRow], paging: &Paging) -> Result<Vec<u8>, StoreError> {
        let mut w = Self::with_capacity(rows.len());
        w.raw("{\"data\":[");
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                w.raw(",");
            }
            w.event(&row.event()?);
        }
        w.raw("],\"paging\":");
        serde_json::to_writer(&mut w.out, paging).expect("writing into a Vec does not fail");
        w.raw("}");
        Ok(w.out)
    }

    /// A get response: `{"data": event}`.
    pub(super) fn envelope(event: &StoredEvent<'_>) -> Vec<u8> {
        let mut w = Self::with_capacity(1);
        w.raw("{\"data\":");
        w.event(event);
        w.raw("}");
        w.out
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
pub(super) fn json_response(body: impl Into<axum::body::Body>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body.into(),
    )
        .into_response()
}

/// A row that cannot be written into a response: 500, the cause logged.
pub(super) fn unreadable(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "writing a response from event rows failed");
    ApiError::Internal
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
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
}
