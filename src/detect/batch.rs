//! Detection over a batch (docs/architecture.md, "Order, staleness and replays"): every
//! message's observations in message order, against the state the batch's transaction read.
//! Each entity's final state is written once. Pure: no I/O.

use std::collections::HashMap;

use foldhash::{HashMap as FastMap, HashMapExt};

use super::{
    AttributeState, ChangeDetector, DetectedEvent, Outcome, StateKey, StateMap, StateWrite,
};
use crate::model::{Observation, SourceRef};

/// One message's observations, with where it was read and its rule's detector.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// The detector of the message's topic rule.
    pub detector: &'a ChangeDetector,
    /// Where the message was read.
    pub source: &'a SourceRef,
    /// What the message says, in its order.
    pub observations: &'a [Observation],
}

/// A detected change with the message it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedEvent {
    /// The change.
    pub event: DetectedEvent,
    /// The message it came from.
    pub source: SourceRef,
    /// Its position among the events of that message.
    pub seq: i32,
}

/// What detection over one batch found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchDetection {
    /// Events to store, in message order.
    pub events: Vec<SourcedEvent>,
    /// The final state of every attribute the batch changed, once each, with its state before
    /// the batch.
    pub states: Vec<StateWrite>,
    /// Attribute observations by outcome.
    pub outcomes: HashMap<Outcome, u64>,
    /// Events by entity type.
    pub events_by_type: HashMap<String, u64>,
}

/// Detects the changes of a batch's messages, in order, updating `states` in place.
pub(crate) fn detect_batch<'a>(
    items: impl IntoIterator<Item = BatchItem<'a>>,
    states: &mut StateMap,
) -> BatchDetection {
    let mut found = BatchDetection::default();
    // Each changed attribute with the state it had before its first change in the batch.
    let mut dirty: FastMap<StateKey, Option<AttributeState>> = FastMap::new();
    for item in items {
        let mut seq = 0;
        for obs in item.observations {
            let detection = item.detector.detect(obs, item.source, states);
            for outcome in &detection.outcomes {
                *found.outcomes.entry(*outcome).or_default() += 1;
            }
            if let Some(event) = detection.event {
                *found
                    .events_by_type
                    .entry(event.entity_type.clone())
                    .or_default() += 1;
                found.events.push(SourcedEvent {
                    event,
                    source: item.source.clone(),
                    seq,
                });
                seq += 1;
            }
            for (key, replaced) in detection.dirty {
                dirty.entry(key).or_insert(replaced);
            }
        }
    }
    found.states = dirty
        .into_iter()
        .filter_map(|(key, before)| {
            let state = states.get(&key)?.clone();
            Some(StateWrite { key, state, before })
        })
        .collect();
    found
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, TimeZone, Utc};

    use super::*;
    use crate::detect::{DetectOptions, FirstSeen};
    use crate::model::{Attributes, ObservationKind, Scope};

    fn t(sec: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + sec, 0).unwrap()
    }

    fn snapshot(entity: &str, status: &str, time: i64) -> Observation {
        Observation {
            event_type: "StatusChangeEvent".into(),
            entity_type: "Declaration".into(),
            entity_id: entity.into(),
            kind: ObservationKind::Snapshot,
            attributes: Attributes::from([("status".to_owned(), Some(status.to_owned()))]),
            captured: BTreeMap::new(),
            event_time: t(time),
            changed_by: None,
            version: None,
            scope: Scope::Unscoped,
        }
    }

    fn at(offset: i64) -> SourceRef {
        SourceRef {
            topic: "t".into(),
            partition: 0,
            offset,
        }
    }

    fn first_event() -> ChangeDetector {
        ChangeDetector::new(DetectOptions {
            first_seen: FirstSeen::Event,
            ..DetectOptions::default()
        })
    }

    /// Messages as (source, observations), detected in one batch.
    fn detect(
        detector: &ChangeDetector,
        messages: &[(SourceRef, Vec<Observation>)],
        states: &mut StateMap,
    ) -> BatchDetection {
        detect_batch(
            messages.iter().map(|(source, observations)| BatchItem {
                detector,
                source,
                observations,
            }),
            states,
        )
    }

    fn status_of(found: &BatchDetection, entity: &str) -> Option<String> {
        found
            .states
            .iter()
            .find(|w| w.key.entity_id == entity)
            .and_then(|w| w.state.value.clone())
    }

    #[test]
    fn events_are_numbered_per_message_in_message_order() {
        let messages = [
            (
                at(0),
                vec![snapshot("a", "draft", 0), snapshot("b", "draft", 0)],
            ),
            (at(1), vec![snapshot("a", "active", 1)]),
        ];
        let found = detect(&first_event(), &messages, &mut StateMap::default());
        let coordinates: Vec<(i64, i32, &str)> = found
            .events
            .iter()
            .map(|e| (e.source.offset, e.seq, e.event.entity_id.as_str()))
            .collect();
        assert_eq!(coordinates, [(0, 0, "a"), (0, 1, "b"), (1, 0, "a")]);
        assert_eq!(
            found.events_by_type,
            HashMap::from([("Declaration".into(), 3)])
        );
        assert_eq!(found.outcomes, HashMap::from([(Outcome::Changed, 3)]));
    }

    #[test]
    fn each_changed_attribute_is_written_once_with_its_final_state() {
        let messages = [
            (at(0), vec![snapshot("a", "draft", 0)]),
            (at(1), vec![snapshot("a", "active", 1)]),
            (at(2), vec![snapshot("a", "closed", 2)]),
        ];
        let found = detect(&first_event(), &messages, &mut StateMap::default());
        assert_eq!(found.states.len(), 1);
        assert_eq!(status_of(&found, "a").as_deref(), Some("closed"));
        assert_eq!(found.states[0].state.source, Some(at(2)));
        assert_eq!(found.states[0].before, None, "first seen in this batch");
    }

    #[test]
    fn nothing_changed_writes_nothing() {
        let mut states = StateMap::default();
        let first = [(at(0), vec![snapshot("a", "active", 0)])];
        detect(&ChangeDetector::default(), &first, &mut states);
        let again = [(at(1), vec![snapshot("a", "active", 0)])];
        let found = detect(&ChangeDetector::default(), &again, &mut states);
        assert!(found.events.is_empty());
        assert!(found.states.is_empty());
        assert_eq!(found.outcomes, HashMap::from([(Outcome::Unchanged, 1)]));
    }

    #[test]
    fn each_message_is_judged_by_its_own_rules_detector() {
        let baseline = ChangeDetector::default();
        let event = first_event();
        let (a, b) = (at(0), at(1));
        let (first, second) = ([snapshot("a", "draft", 0)], [snapshot("b", "draft", 0)]);
        let found = detect_batch(
            [
                BatchItem {
                    detector: &baseline,
                    source: &a,
                    observations: &first,
                },
                BatchItem {
                    detector: &event,
                    source: &b,
                    observations: &second,
                },
            ],
            &mut StateMap::default(),
        );
        let ids: Vec<&str> = found
            .events
            .iter()
            .map(|e| e.event.entity_id.as_str())
            .collect();
        assert_eq!(ids, ["b"]);
        assert_eq!(
            found.outcomes,
            HashMap::from([(Outcome::Baseline, 1), (Outcome::Changed, 1)])
        );
        assert_eq!(found.states.len(), 2);
    }

    #[test]
    fn batch_boundaries_do_not_change_the_result() {
        let statuses = [
            "draft", "active", "active", "draft", "closed", "closed", "active",
        ];
        let messages: Vec<(SourceRef, Vec<Observation>)> = statuses
            .iter()
            .enumerate()
            .map(|(i, s)| (at(i as i64), vec![snapshot("a", s, i as i64 / 2)]))
            .collect();
        let whole = detect(&first_event(), &messages, &mut StateMap::default());
        for cut in 1..messages.len() {
            let mut states = StateMap::default();
            let head = detect(&first_event(), &messages[..cut], &mut states);
            let tail = detect(&first_event(), &messages[cut..], &mut states);
            let events: Vec<SourcedEvent> = head.events.into_iter().chain(tail.events).collect();
            assert_eq!(events, whole.events, "cut at {cut}");
            assert_eq!(
                states.get(&whole.states[0].key),
                Some(&whole.states[0].state),
                "cut at {cut}"
            );
        }
    }
}
