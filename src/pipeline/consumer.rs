//! The consumer loop: on its own thread, collect a batch, select, look up, dead-letter, then
//! store the batch with its offsets in one EventDB transaction and commit to Kafka
//! (docs/architecture.md, "Data flow" and "Exactly once").

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::batch::{self, Batch};
use super::dead_letter;
use super::fhir_lookup::{FhirStatusClient, StatusSource};
use super::flight::{Flight, Part, PartEnd, Verdict};
use super::group::{GroupMember, StoredOffsets, Tp};
use super::internal_events::{
    BatchCommitted, BatchFenced, BatchRetried, BatchStoredAgain, DeadLetterTopicUnavailable,
    Instruments,
};
use super::lookups::Lookups;
use super::process::Message;
use super::rules::RuleSet;
use super::{PipelineError, PipelineSettings};
use crate::detect::{detect_batch, Outcome};
use crate::kafka::{self, Role};
use crate::retry::RetryPolicy;
use crate::store::{
    BatchChanges, CacheUse, EventStore, Handover, NewEvent, OffsetFence, StateCache, StoreError,
    Turn,
};

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

/// A batch being stored: how its parts end, their progress, and the positions it moves to.
struct InFlight {
    handles: Vec<mpsc::Receiver<std::thread::Result<Stored>>>,
    flight: Flight,
    fences: Vec<OffsetFence>,
}

/// A part of a batch to store, for one of the consumer's store threads.
type StoreJob<'scope> = Box<dyn FnOnce() + Send + 'scope>;

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
    let cache = Arc::new(StateCache::new(config.pipeline.state_cache_entities));
    let member = GroupMember::subscribe(
        &config.kafka,
        connection,
        offsets,
        &rules.subscriptions(),
        cache,
    )?;
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
    /// Runs until shutdown: poll, batch, process, commit. The batches in flight are finished
    /// first.
    ///
    /// Batches overlap: while one or two are stored (on the store threads), the next is
    /// collected from Kafka. Once the older of two has ended, the collected one is selected
    /// against the positions the newer one moves to and stored behind it: it starts once the
    /// newer one has run detection and checks its fences once the newer one's transactions with
    /// its partitions have committed (docs/architecture.md, "Exactly once"). That takes
    /// `pipeline.store_concurrency` of at least 2; with 1 the collected batch is selected
    /// against the same positions while the newer one is stored, and stored once that one has
    /// ended, without the partitions it rewound.
    pub(super) fn run(self) {
        let mut last_check = Instant::now();
        let this = &self;
        // The store threads, started once: a part of each of the (at most two) batches in
        // flight at a time.
        let (jobs, queue) = mpsc::channel::<StoreJob<'_>>();
        let queue = Mutex::new(queue);
        std::thread::scope(|scope| {
            for _ in 0..2 * self.store_concurrency {
                let queue = &queue;
                std::thread::Builder::new()
                    .name("store".into())
                    .spawn_scoped(scope, move || loop {
                        let job = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    })
                    .expect("spawning a store thread");
            }
            let mut older: Option<InFlight> = None;
            let mut newer: Option<InFlight> = None;
            while !self.shutdown.is_cancelled() {
                let mut messages = batch::collect(
                    &self.member,
                    self.batch_size,
                    self.batch_linger,
                    &self.shutdown,
                );
                self.after_store(older.take(), &mut messages);
                if messages.is_empty() {
                    self.after_store(newer.take(), &mut messages);
                    self.member.refresh_password(&self.producer);
                    if last_check.elapsed() >= POSITION_CHECK_INTERVAL {
                        self.member.check_positions();
                        last_check = Instant::now();
                    }
                    continue;
                }
                // Stored behind the batch still in flight (each of its transactions behind
                // that one's transactions with its partitions, docs/architecture.md, "Exactly
                // once"), unless store_concurrency is 1: then it waits for that one to end.
                let started = Instant::now();
                let prepared =
                    if let Some(in_flight) = newer.take_if(|_| self.store_concurrency < 2) {
                        // Selected while that one is stored, against the positions it moves to,
                        // then stored once it has ended: without the partitions it rewound.
                        let batch = self.prepare(messages, &in_flight.fences);
                        let rewound = self.after_store(Some(in_flight), &mut Vec::new());
                        batch.and_then(|b| b.without(&rewound))
                    } else {
                        let ahead = newer.as_ref().map(|b| b.fences.as_slice());
                        self.prepare(messages, ahead.unwrap_or_default())
                    };
                let before = newer.take();
                if let Some(batch) = prepared {
                    let fences = batch.fences.clone();
                    let parts = batch.split(self.store_concurrency);
                    let flight = Flight::new();
                    let handles = parts
                        .into_iter()
                        .map(|part| {
                            let reporter = flight.part(partitions(&part.fences));
                            let before = before.as_ref().map(|b| b.flight.clone());
                            let (done, handle) = mpsc::sync_channel(1);
                            let job: StoreJob<'_> = Box::new(move || {
                                let stored = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                    this.store(part, started, reporter, before)
                                }));
                                let _ = done.send(stored);
                            });
                            jobs.send(job).expect("the store threads outlive the loop");
                            handle
                        })
                        .collect();
                    newer = Some(InFlight {
                        handles,
                        flight,
                        fences,
                    });
                }
                older = before;
            }
            self.after_store(older, &mut Vec::new());
            self.after_store(newer, &mut Vec::new());
            drop(jobs);
        });
        tracing::info!("consumer stopping: leaving the group");
        self.member.leave();
    }

    /// Waits for the previous batch's transactions. The messages collected meanwhile from
    /// partitions they rewound are dropped and those partitions sought to their stored positions
    /// again: some of the messages were read before the first seek, from where the fenced batch
    /// had left off. Returns the fences of the partitions rewound.
    fn after_store(
        &self,
        in_flight: Option<InFlight>,
        messages: &mut Vec<Message>,
    ) -> Vec<OffsetFence> {
        let Some(in_flight) = in_flight else {
            return Vec::new();
        };
        let mut rewound = Vec::new();
        for handle in in_flight.handles {
            match handle.recv() {
                Ok(Ok(Stored::Done)) => {}
                Ok(Ok(Stored::Rewound(fences))) => rewound.extend(fences),
                // Nothing in a store thread panics by design; should one, its transaction was
                // not committed and every partition is read again from its stored position.
                Ok(Err(_)) | Err(_) => {
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
            return rewound;
        }
        messages.retain(|m| !batch::fenced(&rewound, &m.topic, m.partition));
        self.member.rewind(&rewound);
        rewound
    }

    /// Selects and decodes a batch and looks up the statuses it announces; `None` when nothing
    /// of it is this member's to store. `ahead`: the positions the batch still in flight moves
    /// its partitions to.
    fn prepare(&self, messages: Vec<Message>, ahead: &[OffsetFence]) -> Option<Batch> {
        let mut positions = self.member.positions().snapshot();
        for fence in ahead {
            if let Some(slot) = positions.get_mut(&(fence.topic.clone(), fence.partition)) {
                *slot = Some(fence.next);
            }
        }
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
    /// transient, then commits its offsets to Kafka. `before`: the batch stored before it, when
    /// it may still be in flight; `part` tells the batch after it how this one is doing.
    fn store(
        &self,
        mut batch: Batch,
        started: Instant,
        mut part: Part,
        before: Option<Flight>,
    ) -> Stored {
        let entities = batch.entities();
        let entity_partitions = batch.partitions_of(&entities);
        let partitions = partitions(&batch.fences);
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
            // Behind the batch before while it is in flight, from when it has run detection;
            // alone once it has committed; not at all when it did not.
            let behind = match self.wait_turn(before.as_ref(), &partitions) {
                Ok(behind) => behind,
                Err(Verdict::Rewound) => {
                    self.member.rewind(&batch.fences);
                    part.ended(PartEnd::Rewound);
                    return Stored::Rewound(batch.fences);
                }
                Err(_) => return Stored::Done,
            };
            let mut tally = Tally::default();
            let (behind, handover) = match behind {
                Some((flight, seen, handover)) => (Some((flight, seen)), handover),
                None => (None, Vec::new()),
            };
            let turn = Turn {
                detected: |handover| part.detected(handover),
                after: behind.map(|(flight, seen)| {
                    let partitions = &partitions;
                    move || async move {
                        flight.finished(seen, partitions).await == Some(Verdict::Committed)
                    }
                }),
                handover,
            };
            let result = self.runtime.block_on(self.store.apply_batch_in_turn(
                &self.group_id,
                &batch.fences,
                &entities,
                |states| detect(&self.rules, &batch, states, &mut tally),
                turn,
                Some(CacheUse {
                    cache: self.member.state_cache(),
                    partitions: &entity_partitions,
                }),
            ));
            match result {
                Ok(report) => {
                    // Before the batch after this one hears of it, so that positions move on
                    // in order.
                    self.member.committed(&batch.fences);
                    part.ended(PartEnd::Committed);
                    self.instruments.emit(BatchCommitted {
                        outcomes: tally.outcomes,
                        events_by_type: tally.events_by_type,
                        events_inserted: report.events_inserted,
                        entities_recalled: report.entities_recalled,
                        entities_read: report.entities_read,
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
                    part.ended(PartEnd::Rewound);
                    return Stored::Rewound(batch.fences);
                }
                // The batch before did not commit (yet): its own retries report why. Or
                // another writer changed an entity between the two, or since the state cache
                // remembered it: stored again against the state as it is.
                Err(
                    error @ (StoreError::PredecessorFailed
                    | StoreError::HandoverStale
                    | StoreError::StateMoved),
                ) => {
                    part.failed();
                    self.instruments.emit(BatchStoredAgain { error: &error });
                }
                Err(error) => {
                    part.failed();
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

    /// Waits until this batch may start behind `before`: `Ok(Some((flight, failures seen,
    /// handover)))` once every part of it has run detection while some with these partitions are
    /// still in flight, `Ok(None)` when those have committed (or it has none of these
    /// partitions: then this batch is alone, as any other consumer's would be), `Err` when
    /// they have not (rewound or abandoned).
    fn wait_turn<'f>(
        &self,
        before: Option<&'f Flight>,
        partitions: &[Tp],
    ) -> Result<Option<Behind<'f>>, Verdict> {
        let Some(flight) = before else {
            return Ok(None);
        };
        let decided = |verdict| match verdict {
            Verdict::Committed => Ok(None),
            other => Err(other),
        };
        if let Some(verdict) = flight.verdict(partitions) {
            return decided(verdict);
        }
        let (seen, handover) = self.runtime.block_on(flight.started(partitions));
        match flight.verdict(partitions) {
            Some(verdict) => decided(verdict),
            None => Ok(Some((flight, seen, handover))),
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
    states: &mut crate::detect::StateMap,
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

/// The batch in flight a batch is stored behind, the failures of its attempts seen so far and
/// what it hands over.
type Behind<'f> = (&'f Flight, u64, Vec<Arc<Handover>>);

/// The partitions of some fences.
fn partitions(fences: &[OffsetFence]) -> Vec<Tp> {
    fences
        .iter()
        .map(|f| (f.topic.clone(), f.partition))
        .collect()
}
