//! The count rows of the events a batch inserts or the terminator deletes (`event_counts`,
//! `event_value_counts`, `event_value_counts_10min`; sql/V4–V6), added up per batch by the store
//! instead of by the insert and delete triggers (sql/V10, sql/V11, docs/performance-log.md). The
//! keys are those of `event_count_keys` and `event_value_keys` in SQL: tests/it/store.rs compares
//! the two after random batches, tests/it/terminator.rs after deletes beside ingestion.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;
use tokio_postgres::types::ToSql;

use super::StoreError;
use crate::detect::DetectedEvent;

/// The `visit_*` methods of a JSON value that is neither an object nor a string (a number, a
/// boolean, null or an array, whose elements are skipped): `$none`.
macro_rules! neither_object_nor_text {
    ($none:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($none)
        }
    };
}

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
    /// Adds one event's keys (its time after the origin, see [`countable`]).
    pub(super) fn add(&mut self, e: &'a DetectedEvent) {
        let attributes = e.properties.as_object().into_iter().flatten();
        self.add_binned(
            Buckets::of(e.event_time),
            &e.event_type,
            &e.entity_type,
            attributes.map(|(name, value)| (name.as_str(), Occurrence::of(value))),
        );
    }

    /// Adds the keys of one event whose time is already in its buckets (by the database's
    /// `date_bin`, for rows it returns: any time, the origin's side included), given the
    /// top-level attributes of its properties (none when they are not an object).
    pub(super) fn add_binned(
        &mut self,
        buckets: Buckets,
        event_type: &'a str,
        entity_type: &'a str,
        attributes: impl IntoIterator<Item = (&'a str, Occurrence<'a>)>,
    ) {
        let Buckets { minute, ten } = buckets;
        let (et, nt) = (event_type, entity_type);
        let mut count = |key: CountKey<'a>| *self.events.entry(key).or_default() += 1;
        count((0, "", minute, et, nt));
        count((10, "", ten, et, nt));
        for (name, occurrence) in attributes {
            count((1, name, minute, et, nt));
            count((11, name, ten, et, nt));
            match occurrence {
                Occurrence::Key => {}
                Occurrence::Uncounted => count((3, name, minute, et, nt)),
                Occurrence::Value(value) => {
                    *self
                        .values
                        .entry((name, value, minute, et, nt))
                        .or_default() += 1;
                    *self
                        .values_10min
                        .entry((name, value, ten, et, nt))
                        .or_default() += 1;
                }
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

        let by_kind = Columns::of(&self.events)?;
        let by_value = Columns::of(&self.values)?;
        let by_value_10min = Columns::of(&self.values_10min)?;
        let by_kind = by_kind.params();
        futures::try_join!(
            tx.execute(&events, &by_kind),
            by_value.upsert(tx, &values),
            by_value_10min.upsert(tx, &values_10min),
        )?;
        Ok(())
    }

    /// Subtracts the counts (of deleted events) from the tables with `event_counts_subtract`
    /// (sql/V11, its count rows found by range since sql/V14), in one statement: each table's
    /// count rows locked in sorted key order, as [`Counts::write`] and the triggers lock them;
    /// rows that reach zero removed.
    pub(super) async fn subtract(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(), StoreError> {
        let statement = tx
            .prepare_cached(
                "SELECT event_counts_subtract( \
                    ARRAY(SELECT ROW(k.*)::event_counts FROM UNNEST($1::int2[], $2::text[], \
                          $3::timestamptz[], $4::text[], $5::text[], $6::int8[]) k), \
                    ARRAY(SELECT ROW(v.*)::event_value_counts FROM UNNEST($7::text[], \
                          $8::text[], $9::timestamptz[], $10::text[], $11::text[], $12::int8[]) v), \
                    ARRAY(SELECT ROW(t.*)::event_value_counts_10min FROM UNNEST($13::text[], \
                          $14::text[], $15::timestamptz[], $16::text[], $17::text[], $18::int8[]) t))",
            )
            .await?;
        let by_kind = Columns::of(&self.events)?;
        let by_value = Columns::of(&self.values)?;
        let by_value_10min = Columns::of(&self.values_10min)?;
        let params: Vec<&(dyn ToSql + Sync)> = by_kind
            .params()
            .into_iter()
            .chain(by_value.params())
            .chain(by_value_10min.params())
            .collect();
        tx.execute(&statement, &params).await?;
        Ok(())
    }
}

/// The minute and the ten minutes an event's time falls in (microseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Buckets {
    pub(super) minute: i64,
    pub(super) ten: i64,
}

impl Buckets {
    /// The buckets of `t` counted from the Unix epoch, which are those of the database's
    /// `date_bin` for times after the count origin (see [`countable`]).
    fn of(t: DateTime<Utc>) -> Self {
        let t = t.timestamp_micros();
        Buckets {
            minute: t.div_euclid(MINUTE) * MINUTE,
            ten: t.div_euclid(TEN_MINUTES) * TEN_MINUTES,
        }
    }
}

/// How one top-level attribute of an event's properties is counted, besides by its name
/// (sql/V5: `event_value_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Occurrence<'a> {
    /// By name only: not an object with a string `new_value`.
    Key,
    /// By value too: a watched attribute (it has an `old_value`) whose string `new_value` has at
    /// most 256 characters.
    Value(&'a str),
    /// As an uncounted occurrence (kind 3): any other string `new_value`.
    Uncounted,
}

impl<'a> Occurrence<'a> {
    fn of(value: &'a Json) -> Self {
        let Json::Object(inner) = value else {
            return Occurrence::Key;
        };
        let Some(Json::String(new_value)) = inner.get("new_value") else {
            return Occurrence::Key;
        };
        Self::of_new_value(new_value, inner.contains_key("old_value"))
    }

    fn of_new_value(new_value: &'a str, watched: bool) -> Self {
        if watched && new_value.chars().count() <= MAX_COUNTED_VALUE {
            Occurrence::Value(new_value)
        } else {
            Occurrence::Uncounted
        }
    }
}

/// An event's properties as its count keys read them: each top-level attribute's name and how
/// it is counted, read from the JSON text without building a `Value`, borrowing the names and
/// values that need no unescaping (the terminator reads those of every row it deletes).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct CountedAttributes<'a>(Vec<(Cow<'a, str>, Counted<'a>)>);

/// [`Occurrence`], owning its value where the text had escapes.
#[derive(Debug, PartialEq, Eq)]
enum Counted<'a> {
    Key,
    Value(Cow<'a, str>),
    Uncounted,
}

impl CountedAttributes<'_> {
    /// The attributes, for [`Counts::add_binned`].
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, Occurrence<'_>)> {
        self.0.iter().map(|(name, counted)| {
            let occurrence = match counted {
                Counted::Key => Occurrence::Key,
                Counted::Value(value) => Occurrence::Value(value),
                Counted::Uncounted => Occurrence::Uncounted,
            };
            (name.as_ref(), occurrence)
        })
    }
}

impl<'de> Deserialize<'de> for CountedAttributes<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Properties;
        impl<'de> Visitor<'de> for Properties {
            type Value = CountedAttributes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut attributes = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(Text(name)) = map.next_key()? {
                    let Attribute(counted) = map.next_value()?;
                    attributes.push((name, counted));
                }
                Ok(CountedAttributes(attributes))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(CountedAttributes::default())
            }
            neither_object_nor_text!(CountedAttributes::default());
        }
        deserializer.deserialize_any(Properties)
    }
}

/// The value of one top-level attribute, as [`Counted`].
struct Attribute<'a>(Counted<'a>);

impl<'de> Deserialize<'de> for Attribute<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Value;
        impl<'de> Visitor<'de> for Value {
            type Value = Attribute<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut new_value, mut watched) = (None, false);
                while let Some(Text(key)) = map.next_key()? {
                    match key.as_ref() {
                        "new_value" => new_value = map.next_value::<NewValue<'de>>()?.0,
                        "old_value" => {
                            watched = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let Some(new_value) = new_value else {
                    return Ok(Attribute(Counted::Key));
                };
                let by_value = matches!(
                    Occurrence::of_new_value(&new_value, watched),
                    Occurrence::Value(_)
                );
                Ok(Attribute(if by_value {
                    Counted::Value(new_value)
                } else {
                    Counted::Uncounted
                }))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Attribute(Counted::Key))
            }
            neither_object_nor_text!(Attribute(Counted::Key));
        }
        deserializer.deserialize_any(Value)
    }
}

/// A `new_value`: its text when it is a string.
struct NewValue<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for NewValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Value;
        impl<'de> Visitor<'de> for Value {
            type Value = NewValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(NewValue(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NewValue(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(NewValue(Some(Cow::Owned(v))))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NewValue(None))
            }
            neither_object_nor_text!(NewValue(None));
        }
        deserializer.deserialize_any(Value)
    }
}

/// A key: borrowed where the JSON text has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Value;
        impl<'de> Visitor<'de> for Value {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Value)
    }
}

/// Counts as the columns of one `UNNEST`: the first column is the kind (`event_counts`) or
/// the attribute (the per-value tables), the next the attribute or the value.
struct Columns<'a, F> {
    firsts: Vec<F>,
    seconds: Vec<&'a str>,
    buckets: Vec<DateTime<Utc>>,
    event_types: Vec<&'a str>,
    entity_types: Vec<&'a str>,
    counts: Vec<i64>,
}

impl<'a, F: ToSql + Sync + Copy + Ord> Columns<'a, F> {
    /// The columns in key order. The statements sort the keys again (their lock order is the
    /// database's), but PostgreSQL's sort checks first whether its input is already sorted, and
    /// then returns at once: where the database sorts text bytewise, as Rust does (the C
    /// collation, which `LocalPostgres` uses), that saves about a quarter of the
    /// subtraction's time (docs/performance-log.md).
    fn of(counts: &HashMap<(F, &'a str, i64, &'a str, &'a str), i64>) -> Result<Self, StoreError> {
        let mut sorted: Vec<_> = counts.iter().collect();
        sorted.sort_unstable_by_key(|(key, _)| **key);
        let mut c = Columns {
            firsts: Vec::with_capacity(counts.len()),
            seconds: Vec::with_capacity(counts.len()),
            buckets: Vec::with_capacity(counts.len()),
            event_types: Vec::with_capacity(counts.len()),
            entity_types: Vec::with_capacity(counts.len()),
            counts: Vec::with_capacity(counts.len()),
        };
        for (&(first, second, bucket, et, nt), &n) in sorted {
            c.firsts.push(first);
            c.seconds.push(second);
            c.buckets.push(time(bucket)?);
            c.event_types.push(et);
            c.entity_types.push(nt);
            c.counts.push(n);
        }
        Ok(c)
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.firsts,
            &self.seconds,
            &self.buckets,
            &self.event_types,
            &self.entity_types,
            &self.counts,
        ]
    }

    async fn upsert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        statement: &tokio_postgres::Statement,
    ) -> Result<u64, tokio_postgres::Error> {
        if self.counts.is_empty() {
            return Ok(0);
        }
        tx.execute(statement, &self.params()).await
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

    /// The keys of one event read from its JSON text (the terminator's rows) and from its
    /// `Value` (ingestion's events).
    fn both_ways(text: &str) -> (Counts<'_>, Counts<'static>) {
        let e: &'static DetectedEvent = Box::leak(Box::new(event(
            serde_json::from_str(text).unwrap(),
            "2024-03-01T10:17:59Z",
        )));
        let mut from_value = Counts::default();
        from_value.add(e);
        let buckets = Buckets::of(e.event_time);
        let attributes: &CountedAttributes<'_> =
            Box::leak(Box::new(serde_json::from_str(text).unwrap()));
        let mut from_text = Counts::default();
        from_text.add_binned(
            buckets,
            "StatusChangeEvent",
            "Declaration",
            attributes.iter(),
        );
        (from_text, from_value)
    }

    #[test]
    fn keys_read_from_the_text_equal_those_of_the_value() {
        let long = "y".repeat(300);
        let at_limit = "é".repeat(256);
        for text in [
            r#"{"status": {"new_value": "active", "old_value": null}, "employee_id": {"new_value": "e1"}}"#.to_owned(),
            format!(r#"{{"long": {{"new_value": "{long}", "old_value": "a"}}, "limit": {{"old_value": 1, "new_value": "{at_limit}"}}}}"#),
            r#"{"esc\"aped": {"new_value": "a\nb\u00e9", "old_value": "x"}, "k\u00e9y": {"new_value": "\"q\""}}"#.to_owned(),
            r#"{"n": {"new_value": 3, "old_value": 2}, "o": {"new_value": {"a": [1, {"b": null}]}, "old_value": {}}}"#.to_owned(),
            r#"{"flat": "text", "num": 1.5, "neg": -2, "t": true, "nil": null, "arr": [1, "a", {"new_value": "x"}]}"#.to_owned(),
            r#"{"no_new": {"old_value": "a", "other": [1, 2]}, "null_new": {"new_value": null, "old_value": "a"}}"#.to_owned(),
            r#"{"nested": {"new_value": "v", "old_value": "w", "extra": {"new_value": "z"}}}"#.to_owned(),
            r#"{}"#.to_owned(),
            r#"[{"status": {"new_value": "active", "old_value": null}}]"#.to_owned(),
            r#""just text""#.to_owned(),
            r#"42"#.to_owned(),
            r#"null"#.to_owned(),
        ] {
            let (from_text, from_value) = both_ways(&text);
            assert_eq!(from_text.events, from_value.events, "{text}");
            assert_eq!(from_text.values, from_value.values, "{text}");
            assert_eq!(from_text.values_10min, from_value.values_10min, "{text}");
        }
    }

    #[test]
    fn names_and_values_without_escapes_are_borrowed() {
        let text = r#"{"status": {"new_value": "active", "old_value": "x"}, "k\u00e9y": {"new_value": "a\tb", "old_value": 1}}"#;
        let CountedAttributes(attributes) = serde_json::from_str(text).unwrap();
        assert!(matches!(
            &attributes[0],
            (
                Cow::Borrowed("status"),
                Counted::Value(Cow::Borrowed("active"))
            )
        ));
        assert!(matches!(
            &attributes[1],
            (Cow::Owned(k), Counted::Value(Cow::Owned(v))) if k == "k\u{e9}y" && v == "a\tb"
        ));
    }
}
