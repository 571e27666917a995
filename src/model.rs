//! The domain types that flow through the pipeline: properties, observations and events.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use message_selector::{OwnedValue, PropertySource, Value};
use serde::{Deserialize, Serialize};

/// Where a message came from: its Kafka coordinates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceRef {
    /// Kafka topic.
    pub topic: String,
    /// Partition within the topic.
    pub partition: i32,
    /// Offset of the message within the partition.
    pub offset: i64,
}

/// The typed message properties a selector sees: Kafka headers, metadata and decoded body fields.
///
/// Names are case-sensitive, as in JMS. Absent names are NULL. A message has a dozen or so
/// properties, so they live in a small vector in insertion order: lookups are a few length-first
/// comparisons, with none of a tree's node allocations on the per-message hot path. Names the
/// decoders lift from a body are constants, kept borrowed without an allocation each.
#[derive(Debug, Clone, Default)]
pub struct Properties {
    values: Vec<(Cow<'static, str>, OwnedValue)>,
}

impl PartialEq for Properties {
    /// Equal when they hold the same names with the same values, in any order.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .values
                .iter()
                .all(|(k, v)| other.get_owned(k) == Some(v))
    }
}

impl Properties {
    /// Empty properties, with room for a typical message's (no regrowth on the hot path).
    pub fn new() -> Self {
        Self {
            values: Vec::with_capacity(16),
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.values
            .iter()
            .position(|(k, _)| k.len() == name.len() && k == name)
    }

    /// Sets (or replaces) a property.
    pub fn insert(&mut self, name: impl Into<String>, value: OwnedValue) {
        let name = name.into();
        match self.position(&name) {
            Some(i) => self.values[i].1 = value,
            None => self.values.push((Cow::Owned(name), value)),
        }
    }

    /// Sets a string property.
    pub fn insert_str(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.insert(name, OwnedValue::String(value.into()));
    }

    /// Sets a property only when it is not present yet (headers win over body fields). The
    /// name is one of the format's constants.
    pub fn insert_if_absent(&mut self, name: &'static str, value: OwnedValue) {
        self.insert_if_absent_with(name, || value);
    }

    /// Like [`Properties::insert_if_absent`], building the value only when it is inserted.
    pub fn insert_if_absent_with(
        &mut self,
        name: &'static str,
        value: impl FnOnce() -> OwnedValue,
    ) {
        if self.position(name).is_none() {
            self.values.push((Cow::Borrowed(name), value()));
        }
    }

    /// Looks a property up.
    pub fn get_owned(&self, name: &str) -> Option<&OwnedValue> {
        self.position(name).map(|i| &self.values[i].1)
    }

    /// Looks up a string property.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.get_owned(name) {
            Some(OwnedValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Removes a property, returning it.
    pub fn remove(&mut self, name: &str) -> Option<OwnedValue> {
        self.position(name).map(|i| self.values.swap_remove(i).1)
    }

    /// Iterates over all properties in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &OwnedValue)> {
        let mut sorted: Vec<(&str, &OwnedValue)> =
            self.values.iter().map(|(k, v)| (&**k, v)).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sorted.into_iter()
    }

    /// Number of properties.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no properties.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl PropertySource for Properties {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        self.get_owned(name).map(OwnedValue::as_value)
    }
}

/// What an observation says happened to the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservationKind {
    /// The entity was created with these attribute values.
    Created,
    /// The message itself says the attributes changed.
    Updated,
    /// The entity was deleted.
    Deleted,
    /// A complete statement of the current values (no claim that anything changed).
    Snapshot,
}

/// What one message says about one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Event type to record (e.g. `StatusChangeEvent`); usually a constant of the format, so
    /// borrowed without an allocation per observation.
    pub event_type: Cow<'static, str>,
    /// Entity type (e.g. `EmployeeRequest`); borrowed when it is a constant of the format.
    pub entity_type: Cow<'static, str>,
    /// Entity identifier.
    pub entity_id: String,
    /// Created, Updated, Deleted or Snapshot.
    pub kind: ObservationKind,
    /// Watched attributes and their values (`None` = NULL, e.g. a closed FHIRcast context).
    pub attributes: BTreeMap<String, Option<String>>,
    /// Captured attributes stored alongside an event but never compared (e.g. `employee_id`).
    pub captured: BTreeMap<String, Option<String>>,
    /// When the change happened according to the producer.
    pub event_time: DateTime<Utc>,
    /// Who made the change, when known.
    pub changed_by: Option<String>,
    /// Producer-side version for the out-of-order guard, when known.
    pub version: Option<i64>,
}

/// A row of the EventDB: one detected status change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Time-ordered identifier (UUID v7).
    pub id: uuid::Uuid,
    /// Event type, e.g. `StatusChangeEvent`.
    pub event_type: String,
    /// Entity type.
    pub entity_type: String,
    /// Entity identifier.
    pub entity_id: String,
    /// `{attr: {new_value, old_value}, captured: {new_value}}`.
    pub properties: serde_json::Value,
    /// When the change happened.
    pub event_time: DateTime<Utc>,
    /// Who made the change.
    pub changed_by: Option<String>,
}
