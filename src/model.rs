//! The domain types that flow through the pipeline: properties, observations and events.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use message_selector::{OwnedValue, PropertySource, Value};
use serde::{Deserialize, Serialize};

/// Where a message came from: its Kafka coordinates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRef {
    /// Kafka topic, shared by the sources of a partition's messages rather than copied into
    /// each (every event and every state a message writes carries one).
    pub topic: std::sync::Arc<str>,
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

    /// Sets a string property (tests).
    #[cfg(test)]
    pub(crate) fn insert_str(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.insert(name, OwnedValue::String(value.into()));
    }

    /// Sets a property only when it is not present yet (headers win over body fields). The
    /// name is one of the format's constants.
    pub(crate) fn insert_if_absent(&mut self, name: &'static str, value: OwnedValue) {
        self.insert_if_absent_with(name, || value);
    }

    /// Like [`Properties::insert_if_absent`], building the value only when it is inserted.
    pub(crate) fn insert_if_absent_with(
        &mut self,
        name: &'static str,
        value: impl FnOnce() -> OwnedValue,
    ) {
        if self.position(name).is_none() {
            self.values.push((Cow::Borrowed(name), value()));
        }
    }

    /// Looks a property up.
    pub(crate) fn get_owned(&self, name: &str) -> Option<&OwnedValue> {
        self.position(name).map(|i| &self.values[i].1)
    }

    /// Looks up a string property (tests).
    #[cfg(test)]
    pub(crate) fn get_str(&self, name: &str) -> Option<&str> {
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
    pub attributes: Attributes,
    /// Captured attributes stored alongside an event but never compared (e.g. `employee_id`).
    pub captured: BTreeMap<String, Option<String>>,
    /// When the change happened according to the producer.
    pub event_time: DateTime<Utc>,
    /// Who made the change, when known.
    pub changed_by: Option<String>,
    /// Producer-side version for the out-of-order guard, when known.
    pub version: Option<i64>,
    /// Which context sets the values, or which context's values it closes (FHIRcast anchors).
    pub scope: Scope,
}

/// How an observation's values belong to a context that can later close them together: a
/// FHIRcast open sets its keys under its anchor resource, and closing the anchor closes the keys
/// that open set. Every other format leaves it [`Scope::Unscoped`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// The values stand alone.
    #[default]
    Unscoped,
    /// The values are set under this anchor (`ResourceType/id`), remembered with them in state.
    SetUnder(String),
    /// The values apply only to attributes last set under this anchor; for any other attribute
    /// the observation changes nothing.
    OnlyUnder(String),
}

/// An observation's watched attributes: each name once, with its value (`None` = NULL), iterated
/// in name order like a `BTreeMap`. Nearly every observation has exactly one attribute, which is
/// kept inline: no allocation for it, unlike a map's node.
#[derive(Clone, Default)]
pub struct Attributes(Entries);

#[derive(Clone)]
enum Entries {
    One([(String, Option<String>); 1]),
    /// None, or more than one, sorted by name.
    Many(Vec<(String, Option<String>)>),
}

impl Default for Entries {
    fn default() -> Self {
        Entries::Many(Vec::new())
    }
}

/// Iterator over [`Attributes`] in name order.
pub type AttributesIter<'a> = std::iter::Map<
    std::slice::Iter<'a, (String, Option<String>)>,
    fn(&'a (String, Option<String>)) -> (&'a String, &'a Option<String>),
>;

impl Attributes {
    /// No attributes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exactly one attribute (the usual case), without allocation.
    pub fn one(name: String, value: Option<String>) -> Self {
        Self(Entries::One([(name, value)]))
    }

    fn as_slice(&self) -> &[(String, Option<String>)] {
        match &self.0 {
            Entries::One(one) => one,
            Entries::Many(many) => many,
        }
    }

    /// Sets an attribute, returning its previous value if it was present.
    pub fn insert(&mut self, name: String, value: Option<String>) -> Option<Option<String>> {
        let at = match self
            .as_slice()
            .binary_search_by(|(k, _)| k.as_str().cmp(&name))
        {
            Ok(i) => {
                let slot = match &mut self.0 {
                    Entries::One(one) => &mut one[i].1,
                    Entries::Many(many) => &mut many[i].1,
                };
                return Some(std::mem::replace(slot, value));
            }
            Err(at) => at,
        };
        let mut many = match std::mem::take(&mut self.0) {
            Entries::One([first]) => {
                let mut many = Vec::with_capacity(2);
                many.push(first);
                many
            }
            Entries::Many(many) => many,
        };
        if many.is_empty() {
            *self = Self::one(name, value);
        } else {
            many.insert(at, (name, value));
            self.0 = Entries::Many(many);
        }
        None
    }

    /// The value of an attribute, if present.
    pub fn get(&self, name: &str) -> Option<&Option<String>> {
        let slice = self.as_slice();
        slice
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| &slice[i].1)
    }

    /// Whether an attribute is present.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Attribute names in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.as_slice().iter().map(|(k, _)| k)
    }

    /// Names and values in name order.
    pub fn iter(&self) -> AttributesIter<'_> {
        self.as_slice().iter().map(|(k, v)| (k, v))
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Keeps only the attributes for which `keep` returns true.
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &mut Option<String>) -> bool) {
        match &mut self.0 {
            Entries::One([(k, v)]) => {
                if !keep(k, v) {
                    *self = Self::new();
                }
            }
            Entries::Many(many) => many.retain_mut(|(k, v)| keep(k, v)),
        }
    }
}

impl PartialEq for Attributes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&str> for Attributes {
    type Output = Option<String>;

    /// The value of a present attribute; panics when it is absent, like a map's index.
    fn index(&self, name: &str) -> &Option<String> {
        self.get(name).expect("no such attribute")
    }
}

impl<'a> IntoIterator for &'a Attributes {
    type Item = (&'a String, &'a Option<String>);
    type IntoIter = AttributesIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<(String, Option<String>)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (String, Option<String>)>>(iter: I) -> Self {
        let mut attributes = Self::new();
        for (name, value) in iter {
            attributes.insert(name, value);
        }
        attributes
    }
}

impl<const N: usize> From<[(String, Option<String>); N]> for Attributes {
    fn from(entries: [(String, Option<String>); N]) -> Self {
        entries.into_iter().collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Attributes behave as the `BTreeMap` they replace: same order, same insert results.
        #[test]
        fn attributes_behave_as_a_sorted_map(
            ops in proptest::collection::vec(
                ("[a-d]{1,2}", proptest::option::of("[xy]"), 0u8..4),
                0..12,
            )
        ) {
            let mut attributes = Attributes::new();
            let mut map = BTreeMap::new();
            for (name, value, op) in ops {
                if op == 0 {
                    let drop_name = name.clone();
                    attributes.retain(|k, _| *k != drop_name);
                    map.retain(|k: &String, _| *k != drop_name);
                } else {
                    let got = attributes.insert(name.clone(), value.clone());
                    prop_assert_eq!(got, map.insert(name, value));
                }
                prop_assert!(attributes.iter().eq(map.iter()));
                prop_assert_eq!(attributes.len(), map.len());
                for probe in ["a", "b", "ab", "dd"] {
                    prop_assert_eq!(attributes.get(probe), map.get(probe));
                    prop_assert_eq!(attributes.contains_key(probe), map.contains_key(probe));
                }
                let rebuilt: Attributes = map.clone().into_iter().collect();
                prop_assert_eq!(&rebuilt, &attributes);
            }
        }
    }
}
