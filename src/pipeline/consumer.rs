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
use crate::store::{BatchChanges, EventStore, NewEvent, OffsetFence, StoreError};

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
    store_concurrency: usize,
    retry: RetryPolicy,
    shutdown: CancellationToken,
}

/// How storing a batch ended, for the batch collected meanwhile.
enum Stored {
    /// Committed, or left uncommitted at shutdown.
    Done,
    /// Fenced: these partitions were sought back to their stored positions.
    Rewound(Vec<OffsetFence>),
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
        store_concurrency: config.pipeline.store_concurrency,
        retry,
        shutdown,
    })
}

impl ConsumerLoop {
    /// Runs until shutdown: poll, batch, process, commit. The in-flight batch is finished first.
    ///
    /// Two batches overlap: while one is stored (on a thread of its own), the next is collected
    /// from Kafka. It is selected only once the stored one has finished, because selection reads
    /// the positions that batch moves (docs/architecture.md, "Exactly once").
    pub(super) fn run(self) {
        let mut last_check = Instant::now();
        let this = &self;
        std::thread::scope(|scope| {
            let mut in_flight: Vec<std::thread::ScopedJoinHandle<'_, Stored>> = Vec::new();
            while !self.shutdown.is_cancelled() {
                let mut messages = batch::collect(
                    &self.member,
                    self.batch_size,
                    self.batch_linger,
                    &self.shutdown,
                );
                self.after_store(std::mem::take(&mut in_flight), &mut messages);
                if messages.is_empty() {
                    self.member.refresh_password(&self.producer);
                    if last_check.elapsed() >= POSITION_CHECK_INTERVAL {
                        self.member.check_positions();
                        last_check = Instant::now();
                    }
                    continue;
                }
                let started = Instant::now();
                if let Some(batch) = self.prepare(messages) {
                    in_flight = batch
                        .split(self.store_concurrency)
                        .into_iter()
                        .map(|part| scope.spawn(move || this.store(part, started)))
                        .collect();
                }
            }
            self.after_store(in_flight, &mut Vec::new());
        });
        tracing::info!("consumer stopping: leaving the group");
        self.member.leave();
    }

    /// Waits for the previous batch's transactions. The messages collected meanwhile from
    /// partitions they rewound are dropped and those partitions sought to their stored positions
    /// again: some of the messages were read before the first seek, from where the fenced batch
    /// had left off.
    fn after_store(
        &self,
        in_flight: Vec<std::thread::ScopedJoinHandle<'_, Stored>>,
        messages: &mut Vec<Message>,
    ) {
        let mut rewound = Vec::new();
        for handle in in_flight {
            match handle.join() {
                Ok(Stored::Done) => {}
                Ok(Stored::Rewound(fences)) => rewound.extend(fences),
                // Nothing in a store thread panics by design; should one, its transaction was
                // not committed and every partition is read again from its stored position.
                Err(_) => {
                    tracing::error!("a batch's store thread panicked; rewinding all partitions");
                    rewound.extend(self.member.positions().snapshot().into_iter().map(
                        |((topic, partition), expected)| OffsetFence {
                            topic,
                            partition,
                            expected,
                            next: 0,
                        },
                    ));
                }
            }
        }
        if rewound.is_empty() {
            return;
        }
        messages.retain(|m| {
            !rewound
                .iter()
                .any(|f| f.topic == m.topic && f.partition == m.partition)
        });
        self.member.rewind(&rewound);
    }

    /// Selects and decodes a batch and looks up the statuses it announces; `None` when nothing
    /// of it is this member's to store.
    fn prepare(&self, messages: Vec<Message>) -> Option<Batch> {
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
        (!batch.fences.is_empty()).then_some(batch)
    }

    /// Dead-letters and stores one batch with its offsets, retrying while the failure is
    /// transient, then commits its offsets to Kafka.
    fn store(&self, mut batch: Batch, started: Instant) -> Stored {
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
                    return Stored::Done;
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
                    return Stored::Done;
                }
                Err(StoreError::Fenced { topic, partition }) => {
                    self.instruments.emit(BatchFenced {
                        topic: &topic,
                        partition,
                    });
                    self.member.rewind(&batch.fences);
                    return Stored::Rewound(batch.fences);
                }
                Err(error) => {
                    self.instruments.emit(BatchRetried {
                        error: &error,
                        attempt,
                    });
                    if !self.pause(attempt) {
                        return Stored::Done;
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
