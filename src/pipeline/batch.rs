//! Batch assembly and selection: up to `pipeline.batch_size` messages or `pipeline.batch_linger`,
//! each one kept only if this member owns its partition and has not stored it yet, then decoded
//! and selected by its topic's rule (docs/architecture.md, "Data flow").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use tokio_util::sync::CancellationToken;

use super::dead_letter::DeadLetter;
use super::group::{GroupMember, Tp};
use super::internal_events::{
    DecodeNotes, Instruments, MessageUndecodable, MessagesConsumed, MessagesRedelivered,
};
use super::process::{process, Message, Processed};
use super::rules::RuleSet;
use crate::detect::BatchItem;
use crate::formats::StatusLookup;
use crate::model::{Observation, SourceRef};
use crate::store::OffsetFence;

/// Polls until `max` messages arrived, or `linger` passed since the first, or shutdown.
/// Empty when nothing arrived within a poll interval.
pub(super) fn collect(
    member: &GroupMember,
    max: usize,
    linger: Duration,
    shutdown: &CancellationToken,
) -> Vec<Message> {
    let mut batch = Vec::new();
    let mut deadline: Option<Instant> = None;
    while batch.len() < max && !shutdown.is_cancelled() {
        let wait = match deadline {
            None => Duration::from_millis(100),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => break,
            },
        };
        match member.poll(wait) {
            None if deadline.is_none() => return batch,
            None => {}
            Some(Ok(m)) => {
                deadline.get_or_insert_with(|| Instant::now() + linger);
                batch.push(owned(&m));
            }
            // Connection failures are logged once per cause by the context (see
            // src/kafka/connection.rs); the consumer repeats them at every poll.
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::AllBrokersDown
                            | RDKafkaErrorCode::BrokerTransportFailure
                            | RDKafkaErrorCode::SSL
                            | RDKafkaErrorCode::Authentication
                            | RDKafkaErrorCode::Resolve
                    )
                ) =>
            {
                tracing::debug!(error = %e, "consume error");
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consume error"),
        }
    }
    batch
}

fn owned(m: &BorrowedMessage<'_>) -> Message {
    Message {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
        timestamp_ms: m.timestamp().to_millis(),
    }
}

/// One selected message's observations, kept with its coordinates for detection.
#[derive(Debug)]
pub(super) struct Selected {
    pub(super) source: SourceRef,
    /// Index of its rule in the [`RuleSet`].
    pub(super) rule: usize,
    pub(super) observations: Vec<Observation>,
}

/// A selected message whose status must be looked up before the batch is stored.
#[derive(Debug)]
pub(super) struct PendingLookup {
    /// Index into the batch's selected messages.
    pub(super) selected: usize,
    pub(super) lookup: StatusLookup,
    /// Kept to become a dead letter should the look-up fail.
    pub(super) message: Message,
}

/// A batch after selection, ready for look-ups and then the transaction.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Messages to dead-letter before the batch's offsets are stored.
    pub(super) letters: Vec<DeadLetter>,
    pub(super) selected: Vec<Selected>,
    /// Statuses to look up (they may add observations to `selected`).
    pub(super) pending: Vec<PendingLookup>,
    /// Each partition's expected and next stored offset.
    pub(super) fences: Vec<OffsetFence>,
}

impl Batch {
    /// Every entity the observations touch, whose state the transaction reads: in key order,
    /// each once. Found when the batch is stored, after its look-ups and any split, rather than
    /// kept in a set as messages are selected.
    pub(super) fn entities(&self) -> Vec<(String, String)> {
        let mut all: Vec<(&str, &str)> = self
            .selected
            .iter()
            .flat_map(|s| &s.observations)
            .map(|o| (&*o.entity_type, o.entity_id.as_str()))
            .collect();
        all.sort_unstable();
        all.dedup();
        all.into_iter()
            .map(|(t, id)| (t.to_owned(), id.to_owned()))
            .collect()
    }

    /// The selected messages as detection reads them.
    pub(super) fn items<'a>(&'a self, rules: &'a RuleSet) -> impl Iterator<Item = BatchItem<'a>> {
        self.selected.iter().filter_map(|item| {
            let rule = rules.get(item.rule)?;
            Some(BatchItem {
                detector: &rule.detector,
                source: &item.source,
                observations: &item.observations,
            })
        })
    }

    /// The one partition each of `entities` was read from in this batch; `None` for one read
    /// from several (the state cache remembers an entity per partition).
    pub(super) fn partitions_of(&self, entities: &[(String, String)]) -> Vec<Option<Tp>> {
        let mut seen: foldhash::HashMap<(&str, &str), Option<(&str, i32)>> =
            foldhash::HashMap::with_capacity_and_hasher(entities.len(), Default::default());
        for item in &self.selected {
            let here = (&*item.source.topic, item.source.partition);
            for o in &item.observations {
                let slot = seen
                    .entry((&*o.entity_type, o.entity_id.as_str()))
                    .or_insert(Some(here));
                if *slot != Some(here) {
                    *slot = None;
                }
            }
        }
        entities
            .iter()
            .map(|(t, id)| {
                let (topic, partition) = seen.get(&(t.as_str(), id.as_str())).copied()??;
                Some((topic.to_owned(), partition))
            })
            .collect()
    }
}

/// Whether one of `fences` is that of `topic`'s `partition`.
pub(super) fn fenced(fences: &[OffsetFence], topic: &str, partition: i32) -> bool {
    fences
        .iter()
        .any(|f| f.topic == topic && f.partition == partition)
}

impl Batch {
    /// The batch without the partitions of `rewound` (their fences, dead letters, messages and
    /// the entities only those touch), or `None` when nothing is left: it was selected against
    /// positions a fenced batch did not reach, and the partitions are read again from their
    /// stored positions.
    pub(super) fn without(mut self, rewound: &[OffsetFence]) -> Option<Batch> {
        if rewound.is_empty() {
            return Some(self);
        }
        let kept = |topic: &str, partition: i32| !fenced(rewound, topic, partition);
        self.fences.retain(|f| kept(&f.topic, f.partition));
        if self.fences.is_empty() {
            return None;
        }
        self.letters
            .retain(|l| kept(&l.message.topic, l.message.partition));
        // `pending` indexes `selected`; look-ups are resolved before a batch is stored.
        debug_assert!(self.pending.is_empty());
        self.selected
            .retain(|s| kept(&s.source.topic, s.source.partition));
        Some(self)
    }

    /// Splits the batch by partition into at most `parts` batches of about equal size (by
    /// selected messages), each with its partitions' fences, dead letters, messages and
    /// entities: each can be stored in a transaction of its own. An entity seen in several of
    /// them is written by each in turn, as when several consumers share it (the later one's
    /// compare-and-set finds it moved, and it is stored again).
    pub(super) fn split(self, parts: usize) -> Vec<Batch> {
        let parts = parts.min(self.fences.len()).max(1);
        if parts == 1 {
            return vec![self];
        }
        // A batch has a few partitions, one fence each: they are found by a scan.
        let mut order: Vec<(Tp, usize)> = self
            .fences
            .iter()
            .map(|f| ((f.topic.clone(), f.partition), 1))
            .collect();
        let find = |tps: &[(Tp, usize)], topic: &str, partition: i32| {
            tps.iter()
                .position(|((t, p), _)| *p == partition && t == topic)
        };
        for s in &self.selected {
            if let Some(i) = find(&order, &s.source.topic, s.source.partition) {
                order[i].1 += 1;
            }
        }
        // Heaviest partition first into the lightest part.
        order.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut load = vec![0usize; parts];
        // Each partition's weight is replaced by the part it goes to.
        for (_, w) in order.iter_mut() {
            let lightest = (0..parts).min_by_key(|&i| load[i]).unwrap_or(0);
            load[lightest] += *w;
            *w = lightest;
        }
        let index =
            |topic: &str, partition: i32| find(&order, topic, partition).map_or(0, |i| order[i].1);
        let mut out: Vec<Batch> = (0..parts).map(|_| Batch::default()).collect();
        for fence in self.fences {
            out[index(&fence.topic, fence.partition)].fences.push(fence);
        }
        for letter in self.letters {
            let m = &letter.message;
            out[index(&m.topic, m.partition)].letters.push(letter);
        }
        // `pending` indexes `selected`; look-ups are resolved before a batch is split.
        debug_assert!(self.pending.is_empty());
        for selected in self.selected {
            out[index(&selected.source.topic, selected.source.partition)]
                .selected
                .push(selected);
        }
        out.retain(|b| !b.fences.is_empty());
        out
    }
}

/// What [`select`] keeps of one partition of the batch, found by a scan (a batch has a few
/// partitions, and their messages come in runs).
struct PartitionRun {
    topic: String,
    /// The topic as the sources of the partition's selected messages share it.
    source_topic: Arc<str>,
    partition: i32,
    /// The stored position; `None` when the partition is not this member's.
    owned: Option<Option<i64>>,
    /// The offset the partition should deliver next: a message beyond it follows a gap.
    following: Option<i64>,
    /// The position the batch moves it to.
    next: Option<i64>,
    consumed: u64,
    selected: u64,
    not_selected: u64,
}

/// The partitions of a batch, with the one of the last message at hand.
#[derive(Default)]
struct PartitionRuns {
    runs: Vec<PartitionRun>,
    last: usize,
}

impl PartitionRuns {
    fn of(&mut self, msg: &Message, positions: &HashMap<Tp, Option<i64>>) -> &mut PartitionRun {
        let same = |r: &PartitionRun| r.partition == msg.partition && r.topic == msg.topic;
        if !self.runs.get(self.last).is_some_and(same) {
            self.last = match self.runs.iter().position(same) {
                Some(i) => i,
                None => {
                    let tp = (msg.topic.clone(), msg.partition);
                    let owned = positions.get(&tp).copied();
                    self.runs.push(PartitionRun {
                        source_topic: Arc::from(tp.0.as_str()),
                        topic: tp.0,
                        partition: tp.1,
                        owned,
                        following: owned.flatten(),
                        next: None,
                        consumed: 0,
                        selected: 0,
                        not_selected: 0,
                    });
                    self.runs.len() - 1
                }
            };
        }
        &mut self.runs[self.last]
    }
}

/// Keeps the messages of partitions this member owns that are not stored yet, and decodes and
/// selects each by its topic's rule. `gap` hears of offsets a partition skipped:
/// `(partition, first missing, next read)`. The per-topic counts go to the metrics once per
/// batch.
pub(super) fn select(
    messages: Vec<Message>,
    positions: &HashMap<Tp, Option<i64>>,
    rules: &RuleSet,
    instruments: &Instruments,
    mut gap: impl FnMut(&Tp, i64, i64),
) -> Batch {
    let mut batch = Batch::default();
    let mut runs = PartitionRuns::default();
    let mut redelivered = 0;
    for msg in messages {
        let run = runs.of(&msg, positions);
        match run.owned {
            None => continue, // not (or no longer) ours; its owner reads it
            Some(Some(expected)) if msg.offset < expected => {
                redelivered += 1;
                continue; // already stored
            }
            Some(_) => {}
        }
        if let Some(want) = run.following.replace(msg.offset + 1) {
            if msg.offset > want {
                gap(&(msg.topic.clone(), msg.partition), want, msg.offset);
            }
        }
        run.consumed += 1;
        run.next = Some(run.next.map_or(msg.offset + 1, |n| n.max(msg.offset + 1)));
        let topic = msg.topic.as_str();
        let Some((index, rule)) = rules
            .index_for(topic)
            .and_then(|i| rules.get(i).map(|r| (i, r)))
        else {
            run.not_selected += 1;
            continue;
        };
        match process(rule, &msg) {
            Processed::Selected {
                observations,
                notes,
                lookup,
            } => {
                run.selected += 1;
                if !notes.is_empty() {
                    instruments.emit(DecodeNotes {
                        topic,
                        notes: &notes,
                    });
                }
                if let Some(lookup) = lookup {
                    batch.pending.push(PendingLookup {
                        selected: batch.selected.len(),
                        lookup,
                        message: msg.clone(),
                    });
                }
                batch.selected.push(Selected {
                    source: SourceRef {
                        topic: Arc::clone(&run.source_topic),
                        partition: msg.partition,
                        offset: msg.offset,
                    },
                    rule: index,
                    observations,
                });
            }
            Processed::NotSelected => run.not_selected += 1,
            Processed::Invalid(error) => {
                instruments.emit(MessageUndecodable {
                    topic,
                    partition: msg.partition,
                    offset: msg.offset,
                    error: &error,
                });
                batch.letters.push(DeadLetter {
                    topic: rule.rule.dead_letter_topic.clone(),
                    format: rule.rule.format.as_str(),
                    message: msg,
                    error,
                });
            }
        }
    }
    if redelivered > 0 {
        instruments.emit(MessagesRedelivered { count: redelivered });
    }
    for run in runs.runs {
        let Some(next) = run.next else {
            continue;
        };
        instruments.emit(MessagesConsumed {
            topic: &run.topic,
            consumed: run.consumed,
            selected: run.selected,
            not_selected: run.not_selected,
        });
        batch.fences.push(OffsetFence {
            expected: run.owned.flatten(),
            topic: run.topic,
            partition: run.partition,
            next,
        });
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PipelineMetrics;
    use crate::pipeline::topics::load_topic_rules;

    fn rules() -> RuleSet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("r.toml"),
            "[[topic]]\nname = \"t\"\nformat = \"esoz\"\ndead_letter_topic = \"t.dlq\"\nselector = \"entity_type <> 'Skipped'\"\n",
        )
        .unwrap();
        RuleSet::compile(load_topic_rules(dir.path()).unwrap()).unwrap()
    }

    fn esoz(entity_type: &str, id: &str) -> Vec<u8> {
        format!(r#"{{"event_type":"StatusChangeEvent","entity_type":"{entity_type}","entity_id":"{id}","properties":{{"status":{{"new_value":"APPROVED"}}}},"event_time":"2024-01-01T00:00:00Z"}}"#).into_bytes()
    }

    fn message(topic: &str, partition: i32, offset: i64, payload: Vec<u8>) -> Message {
        Message {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            payload: Some(payload),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    fn instruments() -> (Instruments, PipelineMetrics) {
        let metrics = PipelineMetrics::register(&prometheus::Registry::new()).unwrap();
        let readiness = std::sync::Arc::new(crate::health::Readiness::default());
        (Instruments::new(metrics.clone(), readiness), metrics)
    }

    fn fences(batch: &Batch) -> Vec<(String, i32, Option<i64>, i64)> {
        let mut f: Vec<_> = batch
            .fences
            .iter()
            .map(|f| (f.topic.clone(), f.partition, f.expected, f.next))
            .collect();
        f.sort();
        f
    }

    #[test]
    fn only_owned_partitions_past_their_stored_offset_are_kept() {
        let positions =
            HashMap::from([(("t".to_owned(), 0), Some(10)), (("t".to_owned(), 1), None)]);
        let messages = vec![
            message("t", 0, 9, esoz("Declaration", "stored")),
            message("t", 0, 10, esoz("Declaration", "a")),
            message("t", 1, 0, esoz("Declaration", "b")),
            message("t", 2, 5, esoz("Declaration", "not-ours")),
        ];
        let (instruments, metrics) = instruments();
        let batch = select(messages, &positions, &rules(), &instruments, |_, _, _| {
            panic!("no gap")
        });
        let read: Vec<(i32, i64)> = batch
            .selected
            .iter()
            .map(|s| (s.source.partition, s.source.offset))
            .collect();
        assert_eq!(read, [(0, 10), (1, 0)]);
        assert_eq!(
            fences(&batch),
            [("t".into(), 0, Some(10), 11), ("t".into(), 1, None, 1)]
        );
        assert_eq!(metrics.redelivered.get(), 1);
        assert_eq!(metrics.consumed.with_label_values(&["t"]).get(), 2);
        assert_eq!(
            batch.entities(),
            [
                ("Declaration".to_owned(), "a".to_owned()),
                ("Declaration".to_owned(), "b".to_owned())
            ]
        );
    }

    #[test]
    fn unselected_and_undecodable_messages_move_the_offset_and_bad_ones_become_dead_letters() {
        let positions = HashMap::from([(("t".to_owned(), 0), Some(0))]);
        let messages = vec![
            message("t", 0, 0, esoz("Skipped", "a")),
            message("t", 0, 1, b"{not json".to_vec()),
            message("t", 0, 2, esoz("Declaration", "c")),
        ];
        let (instruments, metrics) = instruments();
        let batch = select(messages, &positions, &rules(), &instruments, |_, _, _| {
            panic!("no gap")
        });
        assert_eq!(batch.selected.len(), 1);
        assert_eq!(batch.letters.len(), 1);
        assert_eq!(batch.letters[0].topic, "t.dlq");
        assert_eq!(batch.letters[0].message.offset, 1);
        assert_eq!(fences(&batch), [("t".into(), 0, Some(0), 3)]);
        assert_eq!(metrics.not_selected.with_label_values(&["t"]).get(), 1);
    }

    #[test]
    fn a_skipped_offset_is_reported_as_a_possible_gap() {
        let positions = HashMap::from([(("t".to_owned(), 0), Some(4))]);
        let messages = vec![
            message("t", 0, 4, esoz("Declaration", "a")),
            message("t", 0, 7, esoz("Declaration", "b")),
        ];
        let mut gaps = Vec::new();
        let batch = select(
            messages,
            &positions,
            &rules(),
            &instruments().0,
            |tp, want, next| gaps.push((tp.clone(), want, next)),
        );
        assert_eq!(gaps, [(("t".to_owned(), 0), 5, 7)]);
        assert_eq!(fences(&batch), [("t".into(), 0, Some(4), 8)]);
    }

    #[test]
    fn an_entity_read_from_several_partitions_has_no_partition_of_its_own() {
        let positions = HashMap::from([
            (("t".to_owned(), 0), Some(0)),
            (("t".to_owned(), 1), Some(0)),
        ]);
        let messages = vec![
            message("t", 0, 0, esoz("Declaration", "a")),
            message("t", 0, 1, esoz("Declaration", "shared")),
            message("t", 1, 0, esoz("Declaration", "shared")),
            message("t", 1, 1, esoz("Declaration", "b")),
        ];
        let batch = select(
            messages,
            &positions,
            &rules(),
            &instruments().0,
            |_, _, _| panic!("no gap"),
        );
        let entities: Vec<(String, String)> = ["a", "shared", "b", "unknown"]
            .iter()
            .map(|id| ("Declaration".to_owned(), (*id).to_owned()))
            .collect();
        assert_eq!(
            batch.partitions_of(&entities),
            [
                Some(("t".to_owned(), 0)),
                None,
                Some(("t".to_owned(), 1)),
                None
            ]
        );
    }

    #[test]
    fn a_split_keeps_each_partition_whole_with_its_fence_letters_and_entities() {
        let positions = HashMap::from([
            (("t".to_owned(), 0), Some(0)),
            (("t".to_owned(), 1), Some(0)),
            (("t".to_owned(), 2), Some(0)),
        ]);
        let messages = vec![
            message("t", 0, 0, esoz("Declaration", "a")),
            message("t", 0, 1, esoz("Declaration", "shared")),
            message("t", 0, 2, esoz("Declaration", "c")),
            message("t", 1, 0, esoz("Declaration", "shared")),
            message("t", 1, 1, b"{not json".to_vec()),
            message("t", 2, 0, esoz("Declaration", "e")),
        ];
        let (instruments, _) = instruments();
        let select = |parts| {
            select(
                messages.clone(),
                &positions,
                &rules(),
                &instruments,
                |_, _, _| panic!("no gap"),
            )
            .split(parts)
        };
        assert_eq!(select(1).len(), 1);
        let parts = select(2);
        assert_eq!(parts.len(), 2);
        // Partition 0 (three messages) alone; 1 and 2 (two and one) together.
        let partitions = |b: &Batch| -> Vec<i32> {
            let mut p: Vec<i32> = b.fences.iter().map(|f| f.partition).collect();
            p.sort();
            p
        };
        assert_eq!(partitions(&parts[0]), [0]);
        assert_eq!(partitions(&parts[1]), [1, 2]);
        assert_eq!(parts[0].selected.len(), 3);
        assert_eq!(parts[1].selected.len(), 2);
        assert!(parts[0].letters.is_empty());
        assert_eq!(parts[1].letters[0].message.offset, 1);
        let entities = |b: &Batch| -> Vec<String> {
            let mut e: Vec<String> = b.entities().into_iter().map(|(_, id)| id).collect();
            e.sort();
            e
        };
        assert_eq!(entities(&parts[0]), ["a", "c", "shared"]);
        assert_eq!(entities(&parts[1]), ["e", "shared"]);
        // Never more parts than partitions.
        assert_eq!(select(8).len(), 3);

        // Without a rewound partition: the others whole, the entities only it touched gone.
        let rewound = |partitions: &[i32]| -> Vec<OffsetFence> {
            partitions
                .iter()
                .map(|&partition| OffsetFence {
                    topic: "t".into(),
                    partition,
                    expected: Some(0),
                    next: 0,
                })
                .collect()
        };
        let all = || select(1).remove(0);
        let kept = all().without(&rewound(&[0])).unwrap();
        assert_eq!(partitions(&kept), [1, 2]);
        assert_eq!(kept.selected.len(), 2);
        assert_eq!(kept.letters.len(), 1);
        assert_eq!(entities(&kept), ["e", "shared"]);
        let kept = all().without(&rewound(&[1])).unwrap();
        assert_eq!(partitions(&kept), [0, 2]);
        assert!(kept.letters.is_empty());
        assert_eq!(entities(&kept), ["a", "c", "e", "shared"]);
        assert_eq!(all().without(&[]).unwrap().selected.len(), 5);
        assert!(all().without(&rewound(&[0, 1, 2])).is_none());
    }
}
