//! The indexes of `events` that the configuration asks for: the partial B-tree indexes of
//! `api.indexed_attributes` and `api.indexed_values` and, where lists may span more than a day,
//! the GIN index on `properties` (sql/V16).
//!
//! Within a short window the list API reads events in time order and checks attribute filters
//! row by row (see `TIME_FIRST_WINDOW_HOURS` in `store::event_queries::list`): PostgreSQL keeps
//! no statistics on JSON keys, so it cannot tell a common attribute from a rare one, and the
//! GIN indexes of V3 are a disaster for common ones. For an attribute that is rare, or whose
//! single values are looked up (identifiers), that means reading every event of the window. An
//! operator who knows such attributes lists them; each then gets two indexes that hold only the
//! events having it:
//!
//! * `(event_time, id) WHERE jsonb_exists(properties, 'name')`: `attribute_name` in time order;
//! * `((properties -> 'name' -> 'new_value'), event_time, id) WHERE jsonb_exists(properties,
//!   'name')`: `attribute_name` + `new_value` in time order.
//!
//! An attribute of `api.indexed_values` (default `status`) gets only the second: it is in most
//! events, so `attribute_name` alone finds its rows at once in time order, but one of its
//! values may be rare among them (under the pipeline bench's mixed ingestion `status=APPROVED`
//! pages read ~4 500 buffers, 10 ms, in time order, and every request queued behind them).
//! One index, not two, is what each such event costs ingestion (docs/performance-log.md).
//!
//! The list query names such an attribute as a literal (`jsonb_exists(properties, 'name')`),
//! which is what lets PostgreSQL use a partial index in a generic plan. The function form, not
//! the `?` operator: the GIN index of V3 serves `?`, and for a common attribute PostgreSQL
//! (which assumes `?` matches 0.1 % of rows) would read its whole posting list whenever the
//! partial index is missing, say while it is being built. The function form leaves it the
//! time range then, as for other attributes. The indexes are not migrations: which
//! attributes deserve them differs per deployment. `run` builds them in the background at
//! start-up with `CREATE INDEX CONCURRENTLY` (ingestion goes on), one replica at a time; until
//! one is valid, queries simply do not use it. Indexes of attributes taken off the list, and
//! indexes whose definition a release changed (their names differ), stay until dropped by hand
//! (`DROP INDEX CONCURRENTLY events_attr_…`).

use std::time::{Duration, Instant};

use super::{EventStore, StoreError};

/// Advisory lock key: one replica builds the attribute indexes at a time.
const INDEX_LOCK: i64 = 0x4556_4D49_4E44_4558; // "EVMINDEX"

/// The SQL string literal of `text` (standard-conforming strings: quotes doubled).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The GIN index on `properties` (`jsonb_ops`: every key and value), which serves the
/// `attribute_name` and `new_value` filters of lists over windows longer than the time-first
/// limit (`TIME_FIRST_WINDOW_HOURS` in `store::event_queries::list`). Only such windows use it,
/// so it is built only where `api.events_list_max_period_hours` allows them
/// ([`properties_index_needed`]); V3 created it for every deployment and V16 dropped it. Its name
/// and definition are V3's.
pub fn properties_index() -> AttributeIndex {
    let name = "events_properties_keys_idx";
    AttributeIndex {
        definition: format!(
            "CREATE INDEX CONCURRENTLY {name} ON events USING gin (properties jsonb_ops)"
        ),
        name: name.to_owned(),
    }
}

/// Whether lists of up to `max_period_hours` can use [`properties_index`].
pub fn properties_index_needed(max_period_hours: u32) -> bool {
    i64::from(max_period_hours) > super::event_queries::TIME_FIRST_WINDOW_HOURS
}

/// One index of an indexed attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeIndex {
    /// Index name (at most 63 bytes): `events_attr_<attribute>_<hash of the definition>_<kind>`.
    pub name: String,
    /// `CREATE INDEX CONCURRENTLY …` statement.
    pub definition: String,
}

/// The two indexes of `attribute`: by time, then by new value and time.
///
/// An index is found again by its name alone, so the name ends with a hash of what it indexes:
/// should a release change a definition, the new index gets a new name and is built, instead of
/// the old one being taken for it.
pub fn attribute_indexes(attribute: &str) -> [AttributeIndex; 2] {
    // A readable part of the name; the hash tells apart names that read alike (`a.b`, `a_b`)
    // or are long.
    let readable: String = attribute
        .chars()
        .take(30)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let name = literal(attribute);
    let predicate = format!("WHERE jsonb_exists(properties, {name})");
    [
        ("time", "(event_time, id)".to_owned()),
        (
            "value",
            format!("((properties -> {name} -> 'new_value'), event_time, id)"),
        ),
    ]
    .map(|(kind, columns)| {
        let body = format!("ON events {columns} {predicate}");
        let hash = body.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193) // FNV-1a
        });
        let index = format!("events_attr_{readable}_{hash:08x}_{kind}");
        AttributeIndex {
            definition: format!("CREATE INDEX CONCURRENTLY {index} {body}"),
            name: index,
        }
    })
}

/// The index of `attribute`'s values: the second of [`attribute_indexes`], all that an
/// attribute of `api.indexed_values` gets.
pub fn value_index(attribute: &str) -> AttributeIndex {
    let [_, value] = attribute_indexes(attribute);
    value
}

/// What [`EventStore::ensure_api_indexes`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IndexReport {
    /// Indexes built, with the time each took.
    pub built: Vec<(String, Duration)>,
    /// Whether another replica held the build lock, so nothing was checked.
    pub skipped_busy: bool,
}

impl EventStore {
    /// Builds the missing indexes of `attributes` (both of [`attribute_indexes`]), of
    /// `values` (the [`value_index`]) and, with `properties_index`, the GIN index on
    /// `properties`, and rebuilds any left invalid by an interrupted build. Returns at once
    /// when another replica is building them.
    pub async fn ensure_api_indexes(
        &self,
        attributes: &[String],
        values: &[String],
        properties_index: bool,
    ) -> Result<IndexReport, StoreError> {
        let mut report = IndexReport::default();
        let mut indexes: Vec<AttributeIndex> = properties_index
            .then(self::properties_index)
            .into_iter()
            .chain(attributes.iter().flat_map(|a| attribute_indexes(a)))
            .collect();
        for index in values.iter().map(|a| value_index(a)) {
            if !indexes.contains(&index) {
                indexes.push(index);
            }
        }
        if indexes.is_empty() {
            return Ok(report);
        }
        let client = self.client().await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&INDEX_LOCK])
            .await?
            .get(0);
        if !locked {
            report.skipped_busy = true;
            return Ok(report);
        }
        let result = async {
            for index in indexes {
                // NULL: no such index; false: a concurrent build that did not finish.
                let valid: Option<bool> = client
                    .query_one(
                        "SELECT (SELECT indisvalid FROM pg_index \
                          WHERE indexrelid = to_regclass($1))",
                        &[&index.name],
                    )
                    .await?
                    .get(0);
                match valid {
                    Some(true) => continue,
                    Some(false) => {
                        client
                            .batch_execute(&format!("DROP INDEX CONCURRENTLY {}", index.name))
                            .await?;
                    }
                    None => {}
                }
                let started = Instant::now();
                client.batch_execute(&index.definition).await?;
                report.built.push((index.name, started.elapsed()));
            }
            Ok::<_, StoreError>(())
        }
        .await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&INDEX_LOCK])
            .await?;
        result.map(|()| report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_distinct_and_quoted() {
        let [time, value] = attribute_indexes("employee_id");
        assert!(time.name.starts_with("events_attr_employee_id_"));
        assert!(time.name.ends_with("_time") && value.name.ends_with("_value"));
        assert!(time
            .definition
            .ends_with("ON events (event_time, id) WHERE jsonb_exists(properties, 'employee_id')"));
        assert!(value
            .definition
            .contains("((properties -> 'employee_id' -> 'new_value')"));
        let long = "x".repeat(64);
        for index in attribute_indexes(&long) {
            assert!(index.name.len() <= 63, "{}", index.name);
        }
        assert_ne!(
            attribute_indexes("a.b")[0].name,
            attribute_indexes("a_b")[0].name
        );
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(value_index("employee_id"), value);
    }
}
