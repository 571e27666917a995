//! The count rows of the events a batch inserts (`event_counts`, `event_value_counts`,
//! `event_value_counts_10min`; sql/V4–V6), added up per batch by the store instead of by the
//! insert trigger (sql/V10, README "Performance"). The keys are those of `event_count_keys` and
//! `event_value_keys` in SQL: tests/it/store.rs compares the two after random batches.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::StoreError;
use crate::detect::DetectedEvent;

/// Microseconds in a minute and in ten minutes, the count buckets.
const MINUTE: i64 = 60_000_000;
const TEN_MINUTES: i64 = 10 * MINUTE;

/// `date_bin`'s origin in the count functions, 2001-01-01 00:00 UTC, in microseconds since the
/// Unix epoch: a whole number of ten minutes, so that buckets after it are the floor of the
/// time to a minute or ten minutes since the epoch. Earlier times are left to the trigger
/// (older PostgreSQL releases bin them towards the origin).
const ORIGIN: i64 = 978_307_200_000_000;

/// Values longer than this (in characters) are not counted by value (sql/V5).
const MAX_COUNTED_VALUE: usize = 256;

/// The setting that tells the insert and delete triggers the writer counts its rows itself
/// (sql/V10, sql/V11).
pub(super) const COUNTS_WRITTEN: &str =
    "SELECT set_config('event_manager.counts_written', 'on', true)";

/// (kind, attribute, bucket, event type, entity type)
type CountKey<'a> = (i16, &'a str, i64, &'a str, &'a str);
/// (attribute, value, bucket, event type, entity type)
type ValueKey<'a> = (&'a str, &'a str, i64, &'a str, &'a str);

/// The count rows of some events, added up.
#[derive(Debug, Default)]
pub(super) struct Counts<'a> {
    events: HashMap<CountKey<'a>, i64>,
    values: HashMap<ValueKey<'a>, i64>,
    values_10min: HashMap<ValueKey<'a>, i64>,
}

/// Whether the store can count these events itself (every event time after the origin).
pub(super) fn countable<'a>(mut events: impl Iterator<Item = &'a DetectedEvent>) -> bool {
    events.all(|e| e.event_time.timestamp_micros() >= ORIGIN)
}

impl<'a> Counts<'a> {
    /// Adds one event's keys.
    pub(super) fn add(&mut self, e: &'a DetectedEvent) {
        let t = e.event_time.timestamp_micros();
        let minute = t.div_euclid(MINUTE) * MINUTE;
        let ten = t.div_euclid(TEN_MINUTES) * TEN_MINUTES;
        let (et, nt) = (e.event_type.as_str(), e.entity_type.as_str());
        let mut count = |key: CountKey<'a>| *self.events.entry(key).or_default() += 1;
        count((0, "", minute, et, nt));
        count((10, "", ten, et, nt));
        let Json::Object(properties) = &e.properties else {
            return;
        };
        for (name, value) in properties {
            count((1, name, minute, et, nt));
            count((11, name, ten, et, nt));
            let Json::Object(inner) = value else {
                continue;
            };
            let Some(Json::String(new_value)) = inner.get("new_value") else {
                continue;
            };
            if inner.contains_key("old_value") && new_value.chars().count() <= MAX_COUNTED_VALUE {
                let key = (name.as_str(), new_value.as_str(), minute, et, nt);
                *self.values.entry(key).or_default() += 1;
                *self
                    .values_10min
                    .entry((key.0, key.1, ten, et, nt))
                    .or_default() += 1;
            } else {
                count((3, name, minute, et, nt));
            }
        }
    }

    /// Adds the counts to the tables, in the order of V6's trigger (each table in sorted key
    /// order, so that concurrent writers lock count rows in the same order). The statements
    /// are sent together.
    pub(super) async fn write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(), StoreError> {
        let events = tx
            .prepare_cached(
                "INSERT INTO event_counts AS c (kind, attribute, bucket, event_type, entity_type, n) \
                 SELECT * FROM UNNEST($1::int2[], $2::text[], $3::timestamptz[], $4::text[], \
                                      $5::text[], $6::int8[]) ORDER BY 1, 2, 3, 4, 5 \
                 ON CONFLICT (kind, attribute, bucket, event_type, entity_type) \
                 DO UPDATE SET n = c.n + excluded.n",
            )
            .await?;
        let upsert_values = |table: &str| {
            format!(
                "INSERT INTO {table} AS c (attribute, value, bucket, event_type, entity_type, n) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], \
                                      $5::text[], $6::int8[]) ORDER BY 1, 2, 3, 4, 5 \
                 ON CONFLICT (attribute, value, bucket, event_type, entity_type) \
                 DO UPDATE SET n = c.n + excluded.n"
            )
        };
        let values = tx
            .prepare_cached(&upsert_values("event_value_counts"))
            .await?;
        let values_10min = tx
            .prepare_cached(&upsert_values("event_value_counts_10min"))
            .await?;

        let n = self.events.len();
        let (mut kinds, mut attributes, mut buckets) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut event_types, mut entity_types, mut counts) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (&(kind, attribute, bucket, et, nt), &count) in &self.events {
            kinds.push(kind);
            attributes.push(attribute);
            buckets.push(time(bucket)?);
            event_types.push(et);
            entity_types.push(nt);
            counts.push(count);
        }
        let by_value = Columns::of(&self.values)?;
        let by_value_10min = Columns::of(&self.values_10min)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &kinds,
            &attributes,
            &buckets,
            &event_types,
            &entity_types,
            &counts,
        ];
        futures::try_join!(
            tx.execute(&events, &params),
            by_value.upsert(tx, &values),
            by_value_10min.upsert(tx, &values_10min),
        )?;
        Ok(())
    }
}

/// The per-value counts as the columns of one `UNNEST`.
struct Columns<'a> {
    attributes: Vec<&'a str>,
    values: Vec<&'a str>,
    buckets: Vec<DateTime<Utc>>,
    event_types: Vec<&'a str>,
    entity_types: Vec<&'a str>,
    counts: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(counts: &HashMap<ValueKey<'a>, i64>) -> Result<Self, StoreError> {
        let mut c = Columns {
            attributes: Vec::with_capacity(counts.len()),
            values: Vec::with_capacity(counts.len()),
            buckets: Vec::with_capacity(counts.len()),
            event_types: Vec::with_capacity(counts.len()),
            entity_types: Vec::with_capacity(counts.len()),
            counts: Vec::with_capacity(counts.len()),
        };
        for (&(attribute, value, bucket, et, nt), &n) in counts {
            c.attributes.push(attribute);
            c.values.push(value);
            c.buckets.push(time(bucket)?);
            c.event_types.push(et);
            c.entity_types.push(nt);
            c.counts.push(n);
        }
        Ok(c)
    }

    async fn upsert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        statement: &tokio_postgres::Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        if self.counts.is_empty() {
            return Ok(0);
        }
        tx.execute(
            statement,
            &[
                &self.attributes,
                &self.values,
                &self.buckets,
                &self.event_types,
                &self.entity_types,
                &self.counts,
            ],
        )
        .await
    }
}

fn time(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::Config(format!("count bucket out of range: {micros} µs")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(properties: Json, time: &str) -> DetectedEvent {
        DetectedEvent {
            event_type: "StatusChangeEvent".into(),
            entity_type: "Declaration".into(),
            entity_id: "d1".into(),
            properties,
            event_time: time.parse().unwrap(),
            changed_by: None,
        }
    }

    #[test]
    fn keys_of_one_event() {
        let long = "x".repeat(257);
        let e = event(
            json!({
                "status": {"new_value": "active", "old_value": null},
                "employee_id": {"new_value": "e1"},
                "long": {"new_value": long, "old_value": "a"},
                "number": {"new_value": 3, "old_value": 2},
                "flat": "text",
            }),
            "2024-03-01T10:17:59.999999Z",
        );
        let mut c = Counts::default();
        c.add(&e);
        let minute = "2024-03-01T10:17:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp_micros();
        let ten = "2024-03-01T10:10:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp_micros();
        let key =
            |kind, attribute, bucket| (kind, attribute, bucket, "StatusChangeEvent", "Declaration");
        let mut expected: HashMap<CountKey<'_>, i64> = HashMap::new();
        expected.insert(key(0, "", minute), 1);
        expected.insert(key(10, "", ten), 1);
        for name in ["status", "employee_id", "long", "number", "flat"] {
            expected.insert(key(1, name, minute), 1);
            expected.insert(key(11, name, ten), 1);
        }
        // A string new value without an old value, or longer than 256 characters.
        expected.insert(key(3, "employee_id", minute), 1);
        expected.insert(key(3, "long", minute), 1);
        assert_eq!(c.events, expected);
        let value = (
            "status",
            "active",
            minute,
            "StatusChangeEvent",
            "Declaration",
        );
        assert_eq!(c.values, HashMap::from([(value, 1)]));
        assert_eq!(
            c.values_10min,
            HashMap::from([(
                ("status", "active", ten, "StatusChangeEvent", "Declaration"),
                1
            )])
        );
    }

    #[test]
    fn times_before_the_origin_are_left_to_the_trigger() {
        let old = event(json!({}), "2000-12-31T23:59:59Z");
        let new = event(json!({}), "2001-01-01T00:00:00Z");
        assert!(countable([&new].into_iter()));
        assert!(!countable([&new, &old].into_iter()));
    }
}
