//! Change detection (docs/architecture.md, "Change detection"): compares each watched attribute
//! of an observation with the entity's last known value and decides whether a status change
//! happened. Pure: no I/O.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use crate::model::{Observation, ObservationKind, Scope, SourceRef};

mod batch;

pub(crate) use batch::detect_batch;
pub use batch::{BatchDetection, BatchItem, SourcedEvent};

/// Identifies one watched attribute of one entity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateKey {
    /// Entity type.
    pub entity_type: String,
    /// Entity identifier.
    pub entity_id: String,
    /// Attribute name.
    pub attribute: String,
}

/// The last known value of one attribute (a row of `entity_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeState {
    /// Last known value (`None` = NULL).
    pub value: Option<String>,
    /// Producer version of the last observation, when known.
    pub version: Option<i64>,
    /// Event time of the last observation.
    pub event_time: DateTime<Utc>,
    /// Whether the entity was deleted.
    pub deleted: bool,
    /// Where the message that last wrote this state was read; `None` for state written before
    /// positions were recorded.
    pub source: Option<SourceRef>,
    /// The anchor the value was set under ([`Scope::SetUnder`]), if any.
    pub set_by: Option<String>,
}

/// Known state by attribute. Detection, the store and the state cache look keys up for every
/// observation: the hasher is foldhash's, randomly seeded per map, not the standard SipHash, and
/// detection looks up with a borrowed key ([`StateKeyRef`]).
pub type StateMap = hashbrown::HashMap<StateKey, AttributeState>;

/// A [`StateKey`] of borrowed strings: it hashes as the key does and finds its entry in a
/// [`StateMap`] without building one.
#[derive(Debug, Clone, Copy, Hash)]
struct StateKeyRef<'a> {
    entity_type: &'a str,
    entity_id: &'a str,
    attribute: &'a str,
}

impl StateKeyRef<'_> {
    fn to_owned(self) -> StateKey {
        StateKey {
            entity_type: self.entity_type.to_owned(),
            entity_id: self.entity_id.to_owned(),
            attribute: self.attribute.to_owned(),
        }
    }
}

impl hashbrown::Equivalent<StateKey> for StateKeyRef<'_> {
    fn equivalent(&self, key: &StateKey) -> bool {
        self.attribute == key.attribute
            && self.entity_id == key.entity_id
            && self.entity_type == key.entity_type
    }
}

/// What happened to one attribute of an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// First sight of the attribute: state stored, no event.
    Baseline,
    /// Same value as known: nothing to do (repeats and re-deliveries).
    Unchanged,
    /// Older than what is known: ignored.
    Stale,
    /// A real change: an event is recorded.
    Changed,
    /// The entity was deleted: state tombstoned.
    Tombstoned,
}

impl Outcome {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Baseline => "baseline",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale => "stale",
            Outcome::Changed => "changed",
            Outcome::Tombstoned => "tombstoned",
        }
    }
}

/// A detected change, not yet stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectedEvent {
    /// Event type.
    pub event_type: String,
    /// Entity type.
    pub entity_type: String,
    /// Entity identifier.
    pub entity_id: String,
    /// `{attr: {new_value, old_value}, captured: {new_value}}`.
    pub properties: Json,
    /// When the change happened.
    pub event_time: DateTime<Utc>,
    /// Who made it.
    pub changed_by: Option<String>,
}

/// The result of detecting one observation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detection {
    /// The event to store, when at least one watched attribute really changed.
    pub event: Option<DetectedEvent>,
    /// Per-attribute outcomes, for metrics.
    pub outcomes: Vec<Outcome>,
    /// State rows that changed and must be written back, each with the state it replaced
    /// (`None`: the attribute had none).
    pub dirty: Vec<(StateKey, Option<AttributeState>)>,
}

/// A state row to write: the new state and the state detection started from, which the write
/// compares with (docs/architecture.md, "Exactly once").
#[derive(Debug, Clone, PartialEq)]
pub struct StateWrite {
    /// The attribute.
    pub key: StateKey,
    /// Its new state.
    pub state: AttributeState,
    /// Its state before the batch: the row the write replaces, `None` where there was none.
    pub before: Option<AttributeState>,
}

/// What a created or snapshot observation of an attribute without known state records (topic
/// rule key `first_seen`). An `updated` observation is an event either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirstSeen {
    /// An event with `old_value: null`: the producer publishes only changes, so its first
    /// message about an entity is a change too.
    Event,
    /// The state is stored as a baseline and no event is recorded: the producer states the
    /// current value, also of objects it just created.
    #[default]
    Baseline,
}

impl FirstSeen {
    /// The name used in topic rules.
    pub fn as_str(self) -> &'static str {
        match self {
            FirstSeen::Event => "event",
            FirstSeen::Baseline => "baseline",
        }
    }
}

/// Detection settings of a topic rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetectOptions {
    /// Record an event when an entity is deleted.
    pub emit_deleted: bool,
    /// What the first created or snapshot observation of an attribute records.
    pub first_seen: FirstSeen,
}

/// Applies observations to known state, in message order.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChangeDetector {
    options: DetectOptions,
}

impl ChangeDetector {
    /// A detector with the given options.
    pub fn new(options: DetectOptions) -> Self {
        Self { options }
    }

    /// The settings it was built with.
    pub fn options(&self) -> DetectOptions {
        self.options
    }

    /// Detects the changes an observation of the message read at `at` makes against `states`,
    /// updating `states` in place.
    pub fn detect(&self, obs: &Observation, at: &SourceRef, states: &mut StateMap) -> Detection {
        let mut detection = Detection::default();
        let mut changed = Map::new();
        for (attribute, new_value) in &obs.attributes {
            let key = StateKeyRef {
                entity_type: &obs.entity_type,
                entity_id: &obs.entity_id,
                attribute,
            };
            let prior = states.get(&key);
            let (outcome, next) = self.judge(obs, at, prior, new_value);
            if outcome == Outcome::Changed
                || (outcome == Outcome::Tombstoned
                    && self.options.emit_deleted
                    && prior.is_some_and(|p| !p.deleted))
            {
                let old = prior.filter(|p| !p.deleted).and_then(|p| p.value.clone());
                let new = if obs.kind == ObservationKind::Deleted {
                    None
                } else {
                    new_value.clone()
                };
                changed.insert(attribute.clone(), change_json(new, old));
            }
            detection.outcomes.push(outcome);
            if let Some(next) = next {
                let replaced = match states.get_mut(&key) {
                    Some(state) => Some(std::mem::replace(state, next)),
                    None => {
                        states.insert(key.to_owned(), next);
                        None
                    }
                };
                detection.dirty.push((key.to_owned(), replaced));
            }
        }
        if !changed.is_empty() {
            for (name, value) in &obs.captured {
                changed
                    .entry(name.clone())
                    .or_insert_with(|| serde_json::json!({ "new_value": value }));
            }
            detection.event = Some(DetectedEvent {
                event_type: obs.event_type.to_string(),
                entity_type: obs.entity_type.to_string(),
                entity_id: obs.entity_id.clone(),
                properties: Json::Object(changed),
                event_time: obs.event_time,
                changed_by: obs.changed_by.clone(),
            });
        }
        detection
    }

    fn judge(
        &self,
        obs: &Observation,
        at: &SourceRef,
        prior: Option<&AttributeState>,
        new_value: &Option<String>,
    ) -> (Outcome, Option<AttributeState>) {
        let fresh = |value: Option<String>, deleted: bool| AttributeState {
            value,
            version: obs.version,
            event_time: obs.event_time,
            deleted,
            source: Some(at.clone()),
            set_by: match &obs.scope {
                Scope::SetUnder(anchor) => Some(anchor.clone()),
                Scope::Unscoped | Scope::OnlyUnder(_) => None,
            },
        };
        let first = |kind: ObservationKind| {
            let outcome = match (kind, self.options.first_seen) {
                (ObservationKind::Updated, _) | (_, FirstSeen::Event) => Outcome::Changed,
                (_, FirstSeen::Baseline) => Outcome::Baseline,
            };
            (outcome, Some(fresh(new_value.clone(), false)))
        };
        if let Scope::OnlyUnder(anchor) = &obs.scope {
            if prior.and_then(|p| p.set_by.as_ref()) != Some(anchor) {
                // Not set under that anchor (or never set): not this observation's to change.
                return (Outcome::Unchanged, None);
            }
        }
        let Some(prior) = prior else {
            return match obs.kind {
                ObservationKind::Deleted => (Outcome::Tombstoned, Some(fresh(None, true))),
                kind => first(kind),
            };
        };
        if is_read_again(at, prior) {
            // Already applied: judged again against later state it could look like a change
            // (at an equal event time), so it is a no-op whatever it says.
            return (Outcome::Unchanged, None);
        }
        if is_older(obs, prior) {
            return (Outcome::Stale, None);
        }
        if obs.kind == ObservationKind::Deleted {
            return if prior.deleted {
                (Outcome::Unchanged, None)
            } else {
                (Outcome::Tombstoned, Some(fresh(None, true)))
            };
        }
        if prior.deleted {
            // A deleted entity seen again starts over, like a first sight.
            return first(obs.kind);
        }
        if prior.value == *new_value {
            // Nothing changed, but remember the newer version so that older messages
            // arriving later are recognised as stale, and the anchor the value is now set under.
            let next = fresh(new_value.clone(), false);
            let remember = is_newer(obs, prior) || next.set_by != prior.set_by;
            return (Outcome::Unchanged, remember.then_some(next));
        }
        (Outcome::Changed, Some(fresh(new_value.clone(), false)))
    }
}

/// A message read again (a replay): on the partition that wrote the state, at or before the
/// message that wrote it. Offsets of a partition are never reused, which the events' unique
/// source coordinates rely on too.
fn is_read_again(at: &SourceRef, prior: &AttributeState) -> bool {
    prior.source.as_ref().is_some_and(|source| {
        at.offset <= source.offset && at.partition == source.partition && at.topic == source.topic
    })
}

/// An observation is older than the known state when its version is lower than or equal to the
/// known version (a different value at the same version cannot be newer), or — without versions
/// on both sides — when its event time is strictly earlier.
fn is_older(obs: &Observation, prior: &AttributeState) -> bool {
    match (obs.version, prior.version) {
        (Some(v), Some(p)) => v < p,
        _ => obs.event_time < prior.event_time,
    }
}

fn is_newer(obs: &Observation, prior: &AttributeState) -> bool {
    match (obs.version, prior.version) {
        (Some(v), Some(p)) => v > p,
        _ => obs.event_time > prior.event_time,
    }
}

fn change_json(new: Option<String>, old: Option<String>) -> Json {
    serde_json::json!({ "new_value": new, "old_value": old })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;
    use crate::model::Attributes;

    fn t(sec: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + sec, 0).unwrap()
    }

    fn obs(
        kind: ObservationKind,
        status: Option<&str>,
        time: i64,
        version: Option<i64>,
    ) -> Observation {
        Observation {
            event_type: "StatusChangeEvent".into(),
            entity_type: "Declaration".into(),
            entity_id: "d1".into(),
            kind,
            attributes: Attributes::from([("status".to_owned(), status.map(str::to_owned))]),
            captured: BTreeMap::from([("employee_id".to_owned(), Some("e1".to_owned()))]),
            event_time: t(time),
            changed_by: Some("u1".into()),
            version,
            scope: Scope::Unscoped,
        }
    }

    fn run(detector: ChangeDetector, steps: &[Observation]) -> (Vec<Detection>, StateMap) {
        let mut states = StateMap::default();
        let out = steps
            .iter()
            .enumerate()
            .map(|(offset, o)| detector.detect(o, &at(offset as i64), &mut states))
            .collect();
        (out, states)
    }

    fn at(offset: i64) -> SourceRef {
        SourceRef {
            topic: "t".into(),
            partition: 0,
            offset,
        }
    }

    #[test]
    fn a_message_read_again_is_a_no_op_even_at_an_equal_time() {
        let steps = [
            obs(Snapshot, Some("active"), 0, None),
            obs(Snapshot, Some("active"), 4, None),
            obs(Snapshot, Some("draft"), 4, None),
        ];
        for detector in [ChangeDetector::default(), first_event()] {
            let (_, mut states) = run(detector, &steps);
            let before = states.clone();
            // A replay from offset 0: each message again, against the final state.
            for (offset, o) in steps.iter().enumerate() {
                let d = detector.detect(o, &at(offset as i64), &mut states);
                assert_eq!(d.event, None, "offset {offset}");
                assert_eq!(d.outcomes, vec![Outcome::Unchanged]);
            }
            assert_eq!(states, before);
            // The same message on another partition or topic is not a re-read.
            let other = SourceRef {
                partition: 1,
                ..at(1)
            };
            let d = detector.detect(&steps[1], &other, &mut states);
            assert_eq!(d.outcomes, vec![Outcome::Changed]);
        }
    }

    #[test]
    fn a_scoped_close_changes_only_what_its_anchor_set() {
        let scoped = |status: Option<&str>, time: i64, scope: Scope| Observation {
            scope,
            ..obs(Snapshot, status, time, None)
        };
        let report = || "DiagnosticReport/r1".to_owned();
        let study = || "ImagingStudy/s1".to_owned();
        // Set under the report's open (the value was already there): the close closes it.
        let (d, states) = run(
            ChangeDetector::default(),
            &[
                scoped(Some("s1"), 0, Scope::SetUnder(study())),
                scoped(Some("s1"), 0, Scope::SetUnder(report())),
                scoped(None, 5, Scope::OnlyUnder(report())),
            ],
        );
        assert_eq!(d[1].outcomes, vec![Outcome::Unchanged]);
        let keys: Vec<&StateKey> = d[1].dirty.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, [&key()], "the new anchor is remembered");
        assert_eq!(
            d[1].dirty[0].1.as_ref().map(|s| s.set_by.clone()),
            Some(Some(study())),
            "with the state it replaces"
        );
        assert_eq!(
            d[2].event.as_ref().expect("closed").properties["status"],
            serde_json::json!({"new_value": null, "old_value": "s1"})
        );
        assert_eq!(states[&key()].set_by, None);
        // Set under another anchor, or never set: the close leaves it.
        for steps in [
            vec![
                scoped(Some("s1"), 0, Scope::SetUnder(study())),
                scoped(None, 5, Scope::OnlyUnder(report())),
            ],
            vec![scoped(None, 5, Scope::OnlyUnder(report()))],
        ] {
            let (d, states) = run(ChangeDetector::default(), &steps);
            let last = d.last().unwrap();
            assert_eq!(last.event, None);
            assert_eq!(last.outcomes, vec![Outcome::Unchanged]);
            assert!(last.dirty.is_empty());
            assert_eq!(
                states.get(&key()).map(|s| s.value.as_deref()),
                (steps.len() == 2).then_some(Some("s1"))
            );
        }
    }

    fn key() -> StateKey {
        StateKey {
            entity_type: "Declaration".into(),
            entity_id: "d1".into(),
            attribute: "status".into(),
        }
    }

    use ObservationKind::*;

    #[test]
    fn none_then_created_or_snapshot_is_baseline_without_event() {
        for kind in [Created, Snapshot] {
            let (d, states) = run(
                ChangeDetector::default(),
                &[obs(kind, Some("active"), 0, None)],
            );
            assert_eq!(d[0].event, None);
            assert_eq!(d[0].outcomes, vec![Outcome::Baseline]);
            assert_eq!(states[&key()].value.as_deref(), Some("active"));
        }
    }

    #[test]
    fn none_then_updated_is_event_with_null_old_value() {
        let (d, _) = run(
            ChangeDetector::default(),
            &[obs(Updated, Some("active"), 0, None)],
        );
        let e = d[0].event.as_ref().unwrap();
        assert_eq!(
            e.properties["status"],
            serde_json::json!({"new_value": "active", "old_value": null})
        );
        assert_eq!(
            e.properties["employee_id"],
            serde_json::json!({"new_value": "e1"})
        );
    }

    fn first_event() -> ChangeDetector {
        ChangeDetector::new(DetectOptions {
            first_seen: FirstSeen::Event,
            ..DetectOptions::default()
        })
    }

    #[test]
    fn first_seen_event_makes_a_first_created_or_snapshot_an_event_with_null_old_value() {
        for kind in [Created, Snapshot, Updated] {
            let (d, states) = run(first_event(), &[obs(kind, Some("active"), 0, None)]);
            assert_eq!(d[0].outcomes, vec![Outcome::Changed], "{kind:?}");
            let e = d[0].event.as_ref().expect("an event");
            assert_eq!(
                e.properties["status"],
                serde_json::json!({"new_value": "active", "old_value": null})
            );
            assert_eq!(
                e.properties["employee_id"],
                serde_json::json!({"new_value": "e1"})
            );
            assert_eq!(states[&key()].value.as_deref(), Some("active"));
        }
    }

    #[test]
    fn first_seen_event_repeats_are_no_ops_and_older_messages_stale() {
        let (d, _) = run(
            first_event(),
            &[
                obs(Snapshot, Some("active"), 10, None),
                obs(Snapshot, Some("active"), 10, None),
                obs(Snapshot, Some("draft"), 5, None),
                obs(Snapshot, Some("terminated"), 20, None),
            ],
        );
        assert_eq!(d[1].outcomes, vec![Outcome::Unchanged]);
        assert_eq!(d[1].event, None);
        assert_eq!(d[2].outcomes, vec![Outcome::Stale]);
        assert_eq!(d[2].event, None);
        assert_eq!(
            d[3].event.as_ref().expect("a change").properties["status"],
            serde_json::json!({"new_value": "terminated", "old_value": "active"})
        );
    }

    #[test]
    fn first_seen_event_after_a_deletion_starts_over_with_null_old_value() {
        let (d, _) = run(
            first_event(),
            &[
                obs(Snapshot, Some("active"), 0, None),
                obs(Deleted, None, 10, None),
                obs(Created, Some("draft"), 20, None),
            ],
        );
        assert_eq!(d[2].outcomes, vec![Outcome::Changed]);
        assert_eq!(
            d[2].event.as_ref().expect("an event").properties["status"],
            serde_json::json!({"new_value": "draft", "old_value": null})
        );
    }

    #[test]
    fn same_value_is_nothing() {
        for kind in [Created, Updated, Snapshot] {
            let (d, _) = run(
                ChangeDetector::default(),
                &[
                    obs(Snapshot, Some("active"), 0, None),
                    obs(kind, Some("active"), 5, None),
                ],
            );
            assert_eq!(d[1].event, None, "{kind:?}");
            assert_eq!(d[1].outcomes, vec![Outcome::Unchanged]);
        }
    }

    #[test]
    fn different_value_is_event_with_old_and_new() {
        for kind in [Updated, Snapshot] {
            let (d, states) = run(
                ChangeDetector::default(),
                &[
                    obs(Snapshot, Some("active"), 0, None),
                    obs(kind, Some("terminated"), 5, None),
                ],
            );
            let e = d[1].event.as_ref().unwrap();
            assert_eq!(
                e.properties["status"],
                serde_json::json!({"new_value": "terminated", "old_value": "active"})
            );
            assert_eq!(e.changed_by.as_deref(), Some("u1"));
            assert_eq!(e.event_time, t(5));
            assert_eq!(states[&key()].value.as_deref(), Some("terminated"));
        }
    }

    #[test]
    fn older_time_or_version_is_stale() {
        let (d, states) = run(
            ChangeDetector::default(),
            &[
                obs(Snapshot, Some("active"), 10, None),
                obs(Updated, Some("draft"), 5, None),
            ],
        );
        assert_eq!(d[1].event, None);
        assert_eq!(d[1].outcomes, vec![Outcome::Stale]);
        assert_eq!(states[&key()].value.as_deref(), Some("active"));

        let (d, _) = run(
            ChangeDetector::default(),
            &[
                obs(Snapshot, Some("active"), 0, Some(3)),
                obs(Updated, Some("draft"), 50, Some(2)),
            ],
        );
        assert_eq!(d[1].outcomes, vec![Outcome::Stale]);
    }

    #[test]
    fn equal_event_time_is_not_stale() {
        let (d, _) = run(
            ChangeDetector::default(),
            &[
                obs(Snapshot, Some("active"), 10, None),
                obs(Snapshot, Some("terminated"), 10, None),
            ],
        );
        assert_eq!(d[1].outcomes, vec![Outcome::Changed]);
    }

    #[test]
    fn unchanged_newer_version_is_remembered() {
        let (d, _) = run(
            ChangeDetector::default(),
            &[
                obs(Created, Some("active"), 0, Some(1)),
                obs(Updated, Some("active"), 0, Some(3)),
                obs(Updated, Some("draft"), 0, Some(2)),
            ],
        );
        assert_eq!(d[1].dirty.len(), 1);
        assert_eq!(d[2].outcomes, vec![Outcome::Stale]);
    }

    #[test]
    fn deleted_tombstones_and_emits_only_when_asked() {
        let steps = [
            obs(Snapshot, Some("active"), 0, None),
            obs(Deleted, None, 5, None),
        ];
        let (d, states) = run(ChangeDetector::default(), &steps);
        assert_eq!(d[1].event, None);
        assert_eq!(d[1].outcomes, vec![Outcome::Tombstoned]);
        assert!(states[&key()].deleted);

        let (d, _) = run(
            ChangeDetector::new(DetectOptions {
                emit_deleted: true,
                ..DetectOptions::default()
            }),
            &steps,
        );
        let e = d[1].event.as_ref().unwrap();
        assert_eq!(
            e.properties["status"],
            serde_json::json!({"new_value": null, "old_value": "active"})
        );

        let (d, states) = run(
            ChangeDetector::new(DetectOptions {
                emit_deleted: true,
                ..DetectOptions::default()
            }),
            &[obs(Deleted, None, 5, None)],
        );
        assert_eq!(d[0].event, None);
        assert!(states[&key()].deleted);
    }

    #[test]
    fn deleted_then_older_message_is_stale_and_recreation_is_baseline() {
        let (d, _) = run(
            ChangeDetector::default(),
            &[
                obs(Snapshot, Some("active"), 0, None),
                obs(Deleted, None, 10, None),
                obs(Updated, Some("draft"), 5, None),
                obs(Created, Some("draft"), 20, None),
            ],
        );
        assert_eq!(d[2].outcomes, vec![Outcome::Stale]);
        assert_eq!(d[3].outcomes, vec![Outcome::Baseline]);
        assert_eq!(d[3].event, None);
    }

    #[test]
    fn null_values_are_values() {
        let (d, _) = run(
            ChangeDetector::default(),
            &[
                obs(Snapshot, Some("Patient/1"), 0, None),
                obs(Snapshot, None, 1, None),
            ],
        );
        let e = d[1].event.as_ref().unwrap();
        assert_eq!(
            e.properties["status"],
            serde_json::json!({"new_value": null, "old_value": "Patient/1"})
        );
    }
}
