//! What the pipeline reports about itself: one type per event, whose `emit` writes its log line
//! and moves its metrics (and readiness facts) in one place, so that `/readyz`, the metrics and
//! the logs never tell different stories.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::detect::Outcome;
use crate::formats::DecodeError;
use crate::health::Readiness;
use crate::metrics::PipelineMetrics;

/// Where pipeline events are counted and reported: its metrics and the readiness facts.
#[derive(Debug, Clone)]
pub(crate) struct Instruments {
    metrics: PipelineMetrics,
    readiness: Arc<Readiness>,
}

impl Instruments {
    /// Reports to `metrics` and `readiness`.
    pub(crate) fn new(metrics: PipelineMetrics, readiness: Arc<Readiness>) -> Self {
        Self { metrics, readiness }
    }

    /// The readiness facts, for those that have no metric (the Kafka connection's).
    pub(crate) fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Logs and counts `event`.
    pub(crate) fn emit(&self, event: impl InternalEvent) {
        event.emit(self);
    }
}

/// One thing that happened, with its log line and its metrics.
pub(crate) trait InternalEvent {
    /// Logs and counts the event.
    fn emit(self, to: &Instruments);
}

/// The EventDB is reachable or not: readiness and the `database_up` gauge move together, here
/// and nowhere else.
fn database_reachable(to: &Instruments, up: bool) {
    to.readiness.set_database_up(up);
    to.metrics.database_up.set(i64::from(up));
}

/// The database answered (the migrations ran).
pub(crate) struct DatabaseReachable;

impl InternalEvent for DatabaseReachable {
    fn emit(self, to: &Instruments) {
        database_reachable(to, true);
    }
}

/// Messages were read that this member had stored already.
pub(crate) struct MessagesRedelivered {
    pub(crate) count: u64,
}

impl InternalEvent for MessagesRedelivered {
    fn emit(self, to: &Instruments) {
        to.metrics.redelivered.inc_by(self.count);
    }
}

/// A batch's messages of an owned partition of `topic` were read: how many, and how many of
/// them its rule (or the lack of one) selected and did not select.
pub(crate) struct MessagesConsumed<'a> {
    pub(crate) topic: &'a str,
    pub(crate) consumed: u64,
    pub(crate) selected: u64,
    pub(crate) not_selected: u64,
}

impl InternalEvent for MessagesConsumed<'_> {
    fn emit(self, to: &Instruments) {
        let labels = [self.topic];
        to.metrics
            .consumed
            .with_label_values(&labels)
            .inc_by(self.consumed);
        if self.selected > 0 {
            to.metrics
                .selected
                .with_label_values(&labels)
                .inc_by(self.selected);
        }
        if self.not_selected > 0 {
            to.metrics
                .not_selected
                .with_label_values(&labels)
                .inc_by(self.not_selected);
        }
    }
}

/// The decoder's notes on a selected message.
pub(crate) struct DecodeNotes<'a> {
    pub(crate) topic: &'a str,
    pub(crate) notes: &'a [crate::formats::DecodeNote],
}

impl InternalEvent for DecodeNotes<'_> {
    fn emit(self, to: &Instruments) {
        for note in self.notes {
            to.metrics
                .decode_notes
                .with_label_values(&[self.topic, note.as_str()])
                .inc();
        }
    }
}

/// A message that cannot be decoded: it becomes a dead letter.
pub(crate) struct MessageUndecodable<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) error: &'a DecodeError,
}

impl InternalEvent for MessageUndecodable<'_> {
    fn emit(self, to: &Instruments) {
        let reason = self.error.kind.as_str();
        tracing::info!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            reason,
            detail = %self.error.detail,
            "undecodable message: sending to the dead-letter topic"
        );
        to.metrics
            .decode_errors
            .with_label_values(&[self.topic, reason])
            .inc();
    }
}

/// Offsets of a partition were removed by retention before this group read them.
pub(crate) struct RetentionGap<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    /// The first offset not read.
    pub(crate) want: i64,
    /// The offset read instead.
    pub(crate) next: i64,
    pub(crate) log_start: i64,
}

impl InternalEvent for RetentionGap<'_> {
    fn emit(self, to: &Instruments) {
        let missing = self.next - self.want;
        to.metrics
            .retention_gap
            .with_label_values(&[self.topic, &self.partition.to_string()])
            .inc_by(missing.unsigned_abs());
        tracing::warn!(
            topic = self.topic,
            partition = self.partition,
            first_missing = self.want,
            last_missing = self.next - 1,
            missing,
            log_start = self.log_start,
            "retention removed messages this group had not read: continuing after the gap"
        );
    }
}

/// Statuses to look up, but no FHIR server is configured.
pub(crate) struct LookupsNotConfigured {
    pub(crate) messages: usize,
}

impl InternalEvent for LookupsNotConfigured {
    fn emit(self, to: &Instruments) {
        // References are patient data: the log says how many, never which.
        tracing::debug!(
            messages = self.messages,
            "status context events without a status; no FHIR server configured"
        );
        to.metrics
            .status_lookups
            .with_label_values(&["not_configured"])
            .inc_by(self.messages as u64);
    }
}

/// One status look-up ended: `found`, or the failure's name.
pub(crate) struct LookupFinished<'a> {
    pub(crate) result: &'a str,
}

impl InternalEvent for LookupFinished<'_> {
    fn emit(self, to: &Instruments) {
        to.metrics
            .status_lookups
            .with_label_values(&[self.result])
            .inc();
    }
}

/// A message whose status could not be looked up (or used): it becomes a dead letter.
pub(crate) struct LookupDeadLettered<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) error: &'a DecodeError,
}

impl InternalEvent for LookupDeadLettered<'_> {
    fn emit(self, _: &Instruments) {
        tracing::info!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            reason = self.error.kind.as_str(),
            detail = %self.error.detail,
            "status look-up failed: sending to the dead-letter topic"
        );
    }
}

/// A dead letter was acknowledged by the broker.
pub(crate) struct DeadLetterSent<'a> {
    /// The topic the message was read from.
    pub(crate) source_topic: &'a str,
}

impl InternalEvent for DeadLetterSent<'_> {
    fn emit(self, to: &Instruments) {
        to.metrics
            .dead_letters
            .with_label_values(&[self.source_topic])
            .inc();
    }
}

/// Dead letters could not be produced: the batch waits and is tried again.
pub(crate) struct DeadLetterTopicUnavailable<'a> {
    pub(crate) error: &'a rdkafka::error::KafkaError,
}

impl InternalEvent for DeadLetterTopicUnavailable<'_> {
    fn emit(self, _: &Instruments) {
        tracing::warn!(error = %self.error, "dead-letter topic unavailable; retrying the batch");
    }
}

/// A batch and its offsets were committed in the EventDB.
pub(crate) struct BatchCommitted {
    /// Attribute observations by outcome.
    pub(crate) outcomes: HashMap<Outcome, u64>,
    /// Events stored by entity type.
    pub(crate) events_by_type: HashMap<String, u64>,
    pub(crate) events_inserted: u64,
    /// Entities whose state came from the state cache, and those read in the EventDB.
    pub(crate) entities_recalled: u64,
    pub(crate) entities_read: u64,
    pub(crate) partitions: usize,
    /// From the first decode to the commit.
    pub(crate) took: Duration,
}

impl InternalEvent for BatchCommitted {
    fn emit(self, to: &Instruments) {
        for (outcome, n) in self.outcomes {
            to.metrics
                .observations
                .with_label_values(&[outcome.as_str()])
                .inc_by(n);
        }
        for (entity_type, n) in self.events_by_type {
            to.metrics
                .events_stored
                .with_label_values(&[entity_type.as_str()])
                .inc_by(n);
        }
        to.metrics.batches.with_label_values(&["committed"]).inc();
        let cache = &to.metrics.state_cache_entities;
        cache
            .with_label_values(&["recalled"])
            .inc_by(self.entities_recalled);
        cache
            .with_label_values(&["read"])
            .inc_by(self.entities_read);
        to.metrics.batch_duration.observe(self.took.as_secs_f64());
        database_reachable(to, true);
        tracing::debug!(
            events = self.events_inserted,
            partitions = self.partitions,
            "batch committed"
        );
    }
}

/// Another consumer moved a partition of the batch on: it was rolled back.
pub(crate) struct BatchFenced<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
}

impl InternalEvent for BatchFenced<'_> {
    fn emit(self, to: &Instruments) {
        tracing::warn!(
            topic = self.topic,
            partition = self.partition,
            "fenced: another consumer moved the partition on; re-reading positions"
        );
        to.metrics.batches.with_label_values(&["fenced"]).inc();
    }
}

/// A batch was rolled back to be stored again at once (docs/architecture.md, "Exactly once"):
/// the batch stored before it on the same partition did not commit, or another writer changed
/// an entity the two share between them (handover_stale), or a state row it writes since the
/// state cache remembered it (state_moved). No pause: nothing is wrong with the EventDB, and a
/// batch before reports its own failure.
pub(crate) struct BatchStoredAgain<'a> {
    pub(crate) error: &'a crate::store::StoreError,
}

impl InternalEvent for BatchStoredAgain<'_> {
    fn emit(self, to: &Instruments) {
        use crate::store::StoreError;
        let result = match self.error {
            StoreError::HandoverStale => "handover_stale",
            StoreError::StateMoved => "state_moved",
            _ => "predecessor_failed",
        };
        tracing::debug!(result, "batch rolled back; storing it again");
        to.metrics.batches.with_label_values(&[result]).inc();
    }
}

/// The EventDB did not take a batch: it waits and is tried again.
pub(crate) struct BatchRetried<'a> {
    pub(crate) error: &'a crate::store::StoreError,
    pub(crate) attempt: u32,
}

impl InternalEvent for BatchRetried<'_> {
    fn emit(self, to: &Instruments) {
        tracing::warn!(error = %self.error, attempt = self.attempt, "batch not stored; pausing and retrying");
        to.metrics.batches.with_label_values(&["retried"]).inc();
        database_reachable(to, false);
    }
}

/// The stored offsets could not be read: the reader waits and tries again.
pub(crate) struct OffsetsUnreadable<'a> {
    pub(crate) error: &'a crate::store::StoreError,
    pub(crate) attempt: u32,
}

impl InternalEvent for OffsetsUnreadable<'_> {
    fn emit(self, to: &Instruments) {
        tracing::warn!(error = %self.error, attempt = self.attempt, "loading stored offsets failed; retrying");
        database_reachable(to, false);
    }
}

/// Librdkafka's statistics give a partition's lag.
pub(crate) struct ConsumerLag<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) lag: i64,
}

impl InternalEvent for ConsumerLag<'_> {
    fn emit(self, to: &Instruments) {
        to.metrics
            .consumer_lag
            .with_label_values(&[self.topic, &self.partition.to_string()])
            .set(self.lag);
    }
}

/// A partition was taken away: its lag is no longer this member's to report.
pub(crate) struct PartitionRevoked<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
}

impl InternalEvent for PartitionRevoked<'_> {
    fn emit(self, to: &Instruments) {
        let _ = to
            .metrics
            .consumer_lag
            .remove_label_values(&[self.topic, &self.partition.to_string()]);
    }
}

/// A rebalance ended: the assigned partitions gauge and readiness move together.
pub(crate) struct AssignmentChanged {
    pub(crate) partitions: usize,
}

impl InternalEvent for AssignmentChanged {
    fn emit(self, to: &Instruments) {
        to.metrics.assigned_partitions.set(self.partitions as i64);
        to.readiness.set_consumer_assigned(self.partitions > 0);
    }
}
