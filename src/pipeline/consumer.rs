//! The consumer loop: on its own thread, collect a batch, select, look up, dead-letter, then
//! store the batch with its offsets in one EventDB transaction and commit to Kafka
//! (docs/architecture.md, "Data flow" and "Exactly once").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::batch::{self, Batch};
use super::dead_letter;
use super::fhir_lookup::{FhirStatusClient, StatusSource};
use super::group::{GroupMember, StoredOffsets};
use super::internal_events::{
    BatchCommitted, BatchFenced, BatchRetried, DeadLetterTopicUnavailable, Instruments,
};
use super::lookups::Lookups;
use super::process::Message;
use super::rules::RuleSet;
use super::{PipelineError, PipelineSettings};
use crate::detect::{detect_batch, Outcome};
use crate::kafka::{self, Role};
use crate::retry::RetryPolicy;
use crate::store::{BatchChanges, EventStore, NewEvent, StoreError};

/// How often an idle consumer checks whether its stored positions were moved (by `replay`).
const POSITION_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Everything the consumer thread needs.
pub(super) struct ConsumerLoop {
    member: GroupMember,
    /// Produces dead letters.
    producer: kafka::Producer,
    lookups: Lookups,
    runtime: tokio::runtime::Handle,
    store: EventStore,
    rules: Arc<RuleSet>,
    instruments: Instruments,
    group_id: String,
    batch_size: usize,
    batch_linger: Duration,
    retry: RetryPolicy,
    shutdown: CancellationToken,
}

/// Per-outcome counts of one batch, applied to metrics after the commit.
#[derive(Default)]
struct Tally {
    outcomes: HashMap<Outcome, u64>,
    events_by_type: HashMap<String, u64>,
}

/// Builds the consumer (with its callbacks), the dead-letter producer and the look-ups.
pub(super) fn build(
    config: &PipelineSettings,
    runtime: tokio::runtime::Handle,
    store: EventStore,
    rules: Arc<RuleSet>,
    instruments: Instruments,
    shutdown: CancellationToken,
) -> Result<ConsumerLoop, PipelineError> {
    let retry = RetryPolicy {
        max_backoff: config.pipeline.max_retry_backoff,
        shutdown: shutdown.clone(),
    };
    let connection = kafka::ConnectionReporter::new(&config.kafka);
    let producer = kafka::producer(&config.kafka, Role::DeadLetterProducer, &connection)?;
    let lookups = Lookups {
        source: FhirStatusClient::from_config(&config.fhir)?
            .map(|c| Arc::new(c) as Arc<dyn StatusSource>),
        concurrency: config.fhir.concurrency,
    };
    let offsets = StoredOffsets::new(
        runtime.clone(),
        store.clone(),
        config.kafka.group_id.clone(),
        retry.clone(),
        instruments.clone(),
    );
    let member =
        GroupMember::subscribe(&config.kafka, connection, offsets, &rules.subscriptions())?;
    Ok(ConsumerLoop {
        member,
        producer,
        lookups,
        runtime,
        store,
        rules,
        instruments,
        group_id: config.kafka.group_id.clone(),
        batch_size: config.pipeline.batch_size,
        batch_linger: config.pipeline.batch_linger,
        retry,
        shutdown,
    })
}

impl ConsumerLoop {
    /// Runs until shutdown: poll, batch, process, commit. The in-flight batch is finished first.
    pub(super) fn run(self) {
        let mut last_check = Instant::now();
        while !self.shutdown.is_cancelled() {
            let messages = batch::collect(
                &self.member,
                self.batch_size,
                self.batch_linger,
                &self.shutdown,
            );
            if messages.is_empty() {
                self.member.refresh_password(&self.producer);
                if last_check.elapsed() >= POSITION_CHECK_INTERVAL {
                    self.member.check_positions();
                    last_check = Instant::now();
                }
                continue;
            }
            self.handle(messages);
        }
        tracing::info!("consumer stopping: leaving the group");
        self.member.leave();
    }

    fn handle(&self, messages: Vec<Message>) {
        let started = Instant::now();
        let positions = self.member.positions().snapshot();
        let mut batch = batch::select(
            messages,
            &positions,
            &self.rules,
            &self.instruments,
            |tp, want, next| self.member.report_retention_gap(tp, want, next),
        );
        self.runtime.block_on(
            self.lookups
                .resolve(&self.rules, &self.instruments, &mut batch),
        );
        if batch.fences.is_empty() {
            return;
        }
        let entities: Vec<(String, String)> =
            std::mem::take(&mut batch.entities).into_iter().collect();
        let mut attempt = 0u32;
        loop {
            let delivered = self.runtime.block_on(dead_letter::deliver_all(
                &self.producer,
                &mut batch.letters,
                &self.instruments,
            ));
            if let Err(error) = delivered {
                self.instruments
                    .emit(DeadLetterTopicUnavailable { error: &error });
                if !self.pause(attempt) {
                    return;
                }
                attempt += 1;
                continue;
            }
            let mut tally = Tally::default();
            let result = self.runtime.block_on(self.store.apply_batch(
                &self.group_id,
                &batch.fences,
                &entities,
                |states| detect(&self.rules, &batch, states, &mut tally),
            ));
            match result {
                Ok(report) => {
                    self.member.committed(&batch.fences);
                    self.instruments.emit(BatchCommitted {
                        outcomes: tally.outcomes,
                        events_by_type: tally.events_by_type,
                        events_inserted: report.events_inserted,
                        partitions: batch.fences.len(),
                        took: started.elapsed(),
                    });
                    return;
                }
                Err(StoreError::Fenced { topic, partition }) => {
                    self.instruments.emit(BatchFenced {
                        topic: &topic,
                        partition,
                    });
                    self.member.rewind(&batch.fences);
                    return;
                }
                Err(error) => {
                    self.instruments.emit(BatchRetried {
                        error: &error,
                        attempt,
                    });
                    if !self.pause(attempt) {
                        return;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Waits before a retry; false when shutdown was requested (the batch is left uncommitted
    /// and is read again by whoever owns the partition next).
    fn pause(&self, attempt: u32) -> bool {
        self.runtime.block_on(self.retry.wait(attempt))
    }
}

/// Change detection over the batch, against the state read in the transaction, as the store
/// writes it.
fn detect(
    rules: &RuleSet,
    batch: &Batch,
    states: &mut HashMap<crate::detect::StateKey, crate::detect::AttributeState>,
    tally: &mut Tally,
) -> BatchChanges {
    let found = detect_batch(batch.items(rules), states);
    *tally = Tally {
        outcomes: found.outcomes,
        events_by_type: found.events_by_type,
    };
    BatchChanges {
        events: found
            .events
            .into_iter()
            .map(|e| NewEvent {
                event: e.event,
                source: e.source,
                seq: e.seq,
            })
            .collect(),
        states: found.states,
    }
}
