//! The consumer: a consumer-group member on its own thread, batching messages, writing each
//! batch in one EventDB transaction with its offsets, and committing to Kafka afterwards.
//!
//! Offsets live in PostgreSQL (truth) and Kafka (for lag tools and KEDA). On assignment every
//! partition starts at the offset stored in PostgreSQL; each batch's transaction moves the stored
//! offset by compare-and-set, so a consumer that lost its partition cannot write (it is fenced,
//! rolls back, and re-reads its position).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message as _};
use rdkafka::producer::Producer as _;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use futures::StreamExt as _;

use super::dead_letter::{self, DeadLetter};
use super::fhir_lookup::{FhirStatusClient, StatusSource};
use super::process::{finish, process, Message, Processed};
use super::rules::RuleSet;
use super::PipelineError;
use crate::detect::{Outcome, StateKey};
use crate::formats::StatusLookup;
use crate::health::Readiness;
use crate::kafka::{self, Role};
use crate::metrics::PipelineMetrics;
use crate::model::{Observation, SourceRef};
use crate::store::{BatchChanges, EventStore, NewEvent, OffsetFence, RetryPolicy, StoreError};

type Tp = (String, i32);

/// How often an idle consumer checks whether its stored positions were moved (by `replay`).
const POSITION_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Partitions this consumer owns and the stored next offset it believes in
/// (`None`: nothing stored yet).
type Owned = Arc<Mutex<HashMap<Tp, Option<i64>>>>;

fn lock(owned: &Owned) -> MutexGuard<'_, HashMap<Tp, Option<i64>>> {
    // A poisoned lock only means another thread panicked mid-update of plain data.
    owned.lock().unwrap_or_else(|p| p.into_inner())
}

/// librdkafka callbacks: rebalances (seek to stored offsets), statistics (lag), errors (one log
/// line per cause, and `/readyz` false naming it, see src/kafka/connection.rs).
pub(crate) struct PipelineContext {
    connection: kafka::ConnectionReporter,
    runtime: tokio::runtime::Handle,
    store: EventStore,
    group_id: String,
    owned: Owned,
    metrics: PipelineMetrics,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    max_backoff: Duration,
}

impl ClientContext for PipelineContext {
    fn stats(&self, stats: Statistics) {
        let owned = lock(&self.owned);
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0
                    && p.consumer_lag >= 0
                    && owned.contains_key(&(topic.clone(), *partition))
                {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
        let up = stats.brokers.values().any(|b| b.state == "UP");
        if up {
            self.readiness.touch_broker_metadata();
            self.connection.connected();
            self.readiness.set_kafka_error(None);
        }
        self.readiness.set_broker_up(up);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if let Some(cause) = self.connection.log(level, fac, message) {
            self.readiness.set_kafka_error(Some(cause.to_string()));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // Not ready until a broker answers again (the next statistics report says so).
            self.readiness.set_broker_up(false);
        }
        // Transient failures (a broker restarting, an idle connection closed) are left to the
        // assignment and metadata checks of `/readyz`; a misconfiguration is named there.
        if let Some(cause) = self.connection.report(&error, reason) {
            if cause.is_misconfiguration() {
                self.readiness.set_kafka_error(Some(cause.to_string()));
            }
        }
    }
}

impl ConsumerContext for PipelineContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.position_at_stored_offsets(tpl);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut owned = lock(&self.owned);
                    for e in tpl.elements() {
                        owned.remove(&(e.topic().to_owned(), e.partition()));
                        let _ = self
                            .metrics
                            .consumer_lag
                            .remove_label_values(&[e.topic(), &e.partition().to_string()]);
                    }
                }
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "revoking partitions failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                lock(&self.owned).clear();
                let _ = consumer.unassign();
            }
        }
        let n = lock(&self.owned).len();
        self.metrics.assigned_partitions.set(n as i64);
        self.readiness.set_consumer_assigned(n > 0);
    }
}

impl PipelineContext {
    /// Sets each newly assigned partition's start to the offset stored in PostgreSQL and records
    /// ownership. Retries while the database is unavailable: starting elsewhere could skip or
    /// repeat messages.
    fn position_at_stored_offsets(&self, tpl: &mut TopicPartitionList) {
        let partitions: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let stored = load_offsets_retrying(
            &self.runtime,
            &self.store,
            &self.group_id,
            &partitions,
            &RetryPolicy {
                max_backoff: self.max_backoff,
                shutdown: self.shutdown.clone(),
            },
            &self.readiness,
            &self.metrics,
        );
        let Some(stored) = stored else {
            return; // shutting down: own nothing, so nothing is processed
        };
        let mut owned = lock(&self.owned);
        for tp in partitions {
            let next = stored.get(&tp).copied();
            if let Some(next) = next {
                if let Err(e) = tpl.set_partition_offset(&tp.0, tp.1, Offset::Offset(next)) {
                    tracing::error!(error = %e, topic = %tp.0, partition = tp.1, "setting start offset failed");
                    continue;
                }
            }
            tracing::info!(topic = %tp.0, partition = tp.1, stored_offset = ?next, "partition assigned");
            owned.insert(tp, next);
        }
    }
}

/// Everything the consumer thread needs.
pub(crate) struct ConsumerLoop {
    pub(crate) consumer: BaseConsumer<PipelineContext>,
    pub(crate) producer: kafka::Producer,
    /// `kafka.sasl.password_file`, read again while idle so a rotated password is used.
    pub(crate) password_file: Option<kafka::PasswordFile>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) store: EventStore,
    pub(crate) rules: Arc<RuleSet>,
    pub(crate) metrics: PipelineMetrics,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) owned: Owned,
    pub(crate) group_id: String,
    pub(crate) batch_size: usize,
    pub(crate) batch_linger: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) shutdown: CancellationToken,
    /// Reads statuses that messages announce without giving; `None` when not configured.
    pub(crate) lookups: Option<Arc<dyn StatusSource>>,
    /// Most look-ups in flight at once.
    pub(crate) lookup_concurrency: usize,
}

/// Builds the consumer (with its callbacks) and the dead-letter producer.
pub(crate) fn build(
    config: &super::PipelineSettings,
    runtime: tokio::runtime::Handle,
    store: EventStore,
    rules: Arc<RuleSet>,
    metrics: PipelineMetrics,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<ConsumerLoop, PipelineError> {
    let owned: Owned = Arc::default();
    let connection = kafka::ConnectionReporter::new(&config.kafka);
    let context = PipelineContext {
        connection: connection.clone(),
        runtime: runtime.clone(),
        store: store.clone(),
        group_id: config.kafka.group_id.clone(),
        owned: owned.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        max_backoff: config.pipeline.max_retry_backoff,
    };
    let consumer: BaseConsumer<PipelineContext> =
        kafka::client_config(&config.kafka, Role::Consumer)?.create_with_context(context)?;
    let producer = kafka::producer(&config.kafka, Role::DeadLetterProducer, &connection)?;

    let lookup_client = FhirStatusClient::from_config(&config.fhir)?;
    let lookup_concurrency = config.fhir.concurrency;
    let lookups = lookup_client.map(|c| Arc::new(c) as Arc<dyn StatusSource>);

    let subscriptions = rules.subscriptions();
    let refs: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    tracing::info!(topics = ?subscriptions, group = %config.kafka.group_id, "subscribed");

    Ok(ConsumerLoop {
        consumer,
        producer,
        password_file: kafka::PasswordFile::watch(&config.kafka.sasl),
        runtime,
        store,
        rules,
        metrics,
        readiness,
        owned,
        group_id: config.kafka.group_id.clone(),
        batch_size: config.pipeline.batch_size,
        batch_linger: config.pipeline.batch_linger,
        max_backoff: config.pipeline.max_retry_backoff,
        shutdown,
        lookups,
        lookup_concurrency,
    })
}

/// A selected message whose status must be looked up before the batch is stored.
struct PendingLookup {
    /// Index into the batch's selected messages.
    selected: usize,
    lookup: StatusLookup,
    /// Kept to become a dead letter should the look-up fail.
    message: Message,
}

/// One selected message's observations, kept with its coordinates for detection.
struct Selected {
    source: SourceRef,
    rule: usize,
    observations: Vec<Observation>,
}

/// A batch after the pure steps, ready for the transaction.
struct PreparedBatch {
    letters: Vec<DeadLetter>,
    selected: Vec<Selected>,
    fences: Vec<OffsetFence>,
    entities: Vec<(String, String)>,
}

/// Per-outcome counts of one batch, applied to metrics after the commit.
#[derive(Default)]
struct Tally {
    outcomes: HashMap<Outcome, u64>,
    events_by_type: HashMap<String, u64>,
}

impl ConsumerLoop {
    /// Runs until shutdown: poll, batch, process, commit. The in-flight batch is finished first.
    pub(crate) fn run(self) {
        let mut last_check = Instant::now();
        while !self.shutdown.is_cancelled() {
            let batch = self.collect();
            if batch.is_empty() {
                self.refresh_password();
                if last_check.elapsed() >= POSITION_CHECK_INTERVAL {
                    self.check_positions();
                    last_check = Instant::now();
                }
                continue;
            }
            self.handle(batch);
        }
        tracing::info!("consumer stopping: leaving the group");
        self.consumer.unsubscribe();
        // A final poll serves the revocation callback of the unsubscribe.
        let _ = self.consumer.poll(Duration::from_millis(100));
    }

    /// Hands a changed `kafka.sasl.password_file` to the consumer and the dead-letter producer.
    fn refresh_password(&self) {
        let Some(watch) = &self.password_file else {
            return;
        };
        let Some(password) = watch.changed() else {
            return;
        };
        let applied = watch
            .apply(self.consumer.client(), &password)
            .and_then(|()| watch.apply(self.producer.client(), &password));
        match applied {
            Ok(()) => tracing::info!(
                "kafka.sasl.password_file changed: the new password is used from the next \
                 authentication"
            ),
            Err(error) => {
                tracing::error!(%error, "kafka.sasl.password_file changed but was refused")
            }
        }
    }

    fn collect(&self) -> Vec<Message> {
        let mut batch = Vec::new();
        let mut deadline: Option<Instant> = None;
        while batch.len() < self.batch_size && !self.shutdown.is_cancelled() {
            let wait = match deadline {
                None => Duration::from_millis(100),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break,
                },
            };
            match self.consumer.poll(wait) {
                None if deadline.is_none() => return batch,
                None => {}
                Some(Ok(m)) => {
                    deadline.get_or_insert_with(|| Instant::now() + self.batch_linger);
                    batch.push(Message {
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
                    });
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

    fn prepare(&self, batch: Vec<Message>) -> PreparedBatch {
        let owned = lock(&self.owned).clone();
        let mut letters = Vec::new();
        let mut selected = Vec::new();
        let mut next: HashMap<Tp, i64> = HashMap::new();
        let mut entities = HashSet::new();
        let mut pending = Vec::new();
        // The next offset each partition should deliver: a message beyond it may follow a gap.
        let mut following: HashMap<Tp, i64> = owned
            .iter()
            .filter_map(|(tp, next)| next.map(|n| (tp.clone(), n)))
            .collect();
        for msg in batch {
            let tp = (msg.topic.clone(), msg.partition);
            match owned.get(&tp) {
                None => continue, // not (or no longer) ours; its owner reads it
                Some(Some(expected)) if msg.offset < *expected => {
                    self.metrics.redelivered.inc();
                    continue; // already stored
                }
                Some(_) => {}
            }
            if let Some(want) = following.insert(tp.clone(), msg.offset + 1) {
                if msg.offset > want {
                    self.report_retention_gap(&tp, want, msg.offset);
                }
            }
            let topic = msg.topic.as_str();
            self.metrics.consumed.with_label_values(&[topic]).inc();
            let entry = next.entry(tp).or_insert(msg.offset + 1);
            *entry = (*entry).max(msg.offset + 1);
            let Some((index, rule)) = self
                .rules
                .index_for(topic)
                .and_then(|i| self.rules.get(i).map(|r| (i, r)))
            else {
                self.metrics.not_selected.with_label_values(&[topic]).inc();
                continue;
            };
            match process(rule, &msg) {
                Processed::Selected {
                    observations,
                    notes,
                    lookup,
                } => {
                    self.metrics.selected.with_label_values(&[topic]).inc();
                    for note in notes {
                        self.metrics
                            .decode_notes
                            .with_label_values(&[topic, note.as_str()])
                            .inc();
                    }
                    for o in &observations {
                        entities.insert((o.entity_type.to_string(), o.entity_id.clone()));
                    }
                    if let Some(lookup) = lookup {
                        pending.push(PendingLookup {
                            selected: selected.len(),
                            lookup,
                            message: msg.clone(),
                        });
                    }
                    selected.push(Selected {
                        source: SourceRef {
                            topic: msg.topic.clone(),
                            partition: msg.partition,
                            offset: msg.offset,
                        },
                        rule: index,
                        observations,
                    });
                }
                Processed::NotSelected => {
                    self.metrics.not_selected.with_label_values(&[topic]).inc();
                }
                Processed::Invalid(error) => {
                    tracing::info!(
                        topic,
                        partition = msg.partition,
                        offset = msg.offset,
                        reason = error.kind.as_str(),
                        detail = %error.detail,
                        "undecodable message: sending to the dead-letter topic"
                    );
                    self.metrics
                        .decode_errors
                        .with_label_values(&[topic, error.kind.as_str()])
                        .inc();
                    letters.push(DeadLetter {
                        topic: rule.rule.dead_letter_topic.clone(),
                        format: rule.rule.format.as_str(),
                        message: msg,
                        error,
                    });
                }
            }
        }
        self.resolve(pending, &mut selected, &mut letters, &mut entities);
        let fences = next
            .into_iter()
            .map(|((topic, partition), next)| OffsetFence {
                expected: owned.get(&(topic.clone(), partition)).copied().flatten(),
                topic,
                partition,
                next,
            })
            .collect();
        PreparedBatch {
            letters,
            selected,
            fences,
            entities: entities.into_iter().collect(),
        }
    }

    /// Offsets `want..next` were not delivered. Transaction markers, aborted transactions and
    /// compaction leave such holes too; retention is told apart by the partition's log start
    /// having passed `want`: librdkafka found the stored position out of range and applied
    /// `auto.offset.reset` (README.md, `kafka.auto_offset_reset`). Counted and warned once per gap;
    /// the consumer moves on.
    fn report_retention_gap(&self, tp: &Tp, want: i64, next: i64) {
        let (topic, partition) = (tp.0.as_str(), tp.1);
        // Asked of the broker only when offsets were skipped, which is rare.
        let log_start = match self.consumer.fetch_watermarks(
            topic,
            partition,
            Duration::from_secs(5),
        ) {
            Ok((low, _)) => low,
            Err(e) => {
                tracing::warn!(topic, partition, first_missing = want, next, error = %e, "offsets skipped; the partition's log start is unknown");
                return;
            }
        };
        if log_start <= want {
            return; // markers, aborted or compacted records: nothing was lost
        }
        let missing = next - want;
        self.metrics
            .retention_gap
            .with_label_values(&[topic, &partition.to_string()])
            .inc_by(missing.unsigned_abs());
        tracing::warn!(
            topic,
            partition,
            first_missing = want,
            last_missing = next - 1,
            missing,
            log_start,
            "retention removed messages this group had not read: continuing after the gap"
        );
    }

    /// Looks up the statuses messages announced without giving them (concurrently, bounded),
    /// before the transaction. A found status becomes the observation the message would have
    /// given; a failed look-up turns its message into a dead letter. Without a configured FHIR
    /// server the messages stay as they are: no status is ever invented.
    fn resolve(
        &self,
        pending: Vec<PendingLookup>,
        selected: &mut Vec<Selected>,
        letters: &mut Vec<DeadLetter>,
        entities: &mut HashSet<(String, String)>,
    ) {
        if pending.is_empty() {
            return;
        }
        let Some(source) = &self.lookups else {
            // References are patient data: the log says how many, never which.
            tracing::debug!(
                messages = pending.len(),
                "status context events without a status; no FHIR server configured"
            );
            self.metrics
                .status_lookups
                .with_label_values(&["not_configured"])
                .inc_by(pending.len() as u64);
            return;
        };
        let results: Vec<_> = self.runtime.block_on(
            futures::stream::iter(pending.iter().map(|p| source.status(&p.lookup)))
                .buffered(self.lookup_concurrency.max(1))
                .collect(),
        );
        let mut failed = HashSet::new();
        for (p, result) in pending.into_iter().zip(results) {
            let Some(item) = selected.get_mut(p.selected) else {
                continue;
            };
            let Some(rule) = self.rules.get(item.rule) else {
                continue;
            };
            let outcome = result
                .map_err(|e| {
                    self.metrics
                        .status_lookups
                        .with_label_values(&[e.as_str()])
                        .inc();
                    e.into_decode_error()
                })
                .and_then(|status| {
                    self.metrics
                        .status_lookups
                        .with_label_values(&["found"])
                        .inc();
                    finish(rule, p.lookup.into_observation(status))
                });
            match outcome {
                Ok(observation) => {
                    if let Some(o) = observation {
                        entities.insert((o.entity_type.to_string(), o.entity_id.clone()));
                        item.observations.push(o);
                    }
                }
                Err(error) => {
                    tracing::info!(
                        topic = %p.message.topic,
                        partition = p.message.partition,
                        offset = p.message.offset,
                        reason = error.kind.as_str(),
                        detail = %error.detail,
                        "status look-up failed: sending to the dead-letter topic"
                    );
                    failed.insert(p.selected);
                    letters.push(DeadLetter {
                        topic: rule.rule.dead_letter_topic.clone(),
                        format: rule.rule.format.as_str(),
                        message: p.message,
                        error,
                    });
                }
            }
        }
        if !failed.is_empty() {
            let mut index = 0;
            selected.retain(|_| {
                let keep = !failed.contains(&index);
                index += 1;
                keep
            });
        }
    }

    fn handle(&self, batch: Vec<Message>) {
        let started = Instant::now();
        let mut prepared = self.prepare(batch);
        if prepared.fences.is_empty() {
            return;
        }
        let mut attempt = 0u32;
        loop {
            if let Err(e) = self.deliver_letters(&mut prepared.letters) {
                tracing::warn!(error = %e, "dead-letter topic unavailable; retrying the batch");
                if !self.pause(attempt) {
                    return;
                }
                attempt += 1;
                continue;
            }
            let mut tally = Tally::default();
            let result = self.runtime.block_on(self.store.apply_batch(
                &self.group_id,
                &prepared.fences,
                &prepared.entities,
                |states| detect_batch(&self.rules, &prepared.selected, states, &mut tally),
            ));
            match result {
                Ok(report) => {
                    self.committed(&prepared.fences);
                    for (outcome, n) in tally.outcomes {
                        self.metrics
                            .observations
                            .with_label_values(&[outcome.as_str()])
                            .inc_by(n);
                    }
                    for (entity_type, n) in tally.events_by_type {
                        self.metrics
                            .events_stored
                            .with_label_values(&[entity_type.as_str()])
                            .inc_by(n);
                    }
                    self.metrics.batches.with_label_values(&["committed"]).inc();
                    self.metrics
                        .batch_duration
                        .observe(started.elapsed().as_secs_f64());
                    super::database_reachable(&self.readiness, &self.metrics, true);
                    tracing::debug!(
                        events = report.events_inserted,
                        partitions = prepared.fences.len(),
                        "batch committed"
                    );
                    return;
                }
                Err(StoreError::Fenced { topic, partition }) => {
                    tracing::warn!(%topic, partition, "fenced: another consumer moved the partition on; re-reading positions");
                    self.metrics.batches.with_label_values(&["fenced"]).inc();
                    self.rewind(&prepared.fences);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "batch not stored; pausing and retrying");
                    self.metrics.batches.with_label_values(&["retried"]).inc();
                    super::database_reachable(&self.readiness, &self.metrics, false);
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
        let retry = RetryPolicy {
            max_backoff: self.max_backoff,
            shutdown: self.shutdown.clone(),
        };
        self.runtime.block_on(retry.wait(attempt))
    }

    fn deliver_letters(&self, letters: &mut Vec<DeadLetter>) -> Result<(), KafkaError> {
        if letters.is_empty() {
            return Ok(());
        }
        let results = self.runtime.block_on(futures::future::join_all(
            letters
                .iter()
                .map(|l| dead_letter::deliver(&self.producer, l, Duration::from_secs(30))),
        ));
        let mut first_error = None;
        let mut kept = Vec::new();
        for (letter, result) in letters.drain(..).zip(results) {
            match result {
                Ok(()) => self
                    .metrics
                    .dead_letters
                    .with_label_values(&[letter.message.topic.as_str()])
                    .inc(),
                Err(e) => {
                    first_error.get_or_insert(e);
                    kept.push(letter);
                }
            }
        }
        // Delivered letters are not sent again on retry.
        *letters = kept;
        first_error.map_or(Ok(()), Err)
    }

    fn committed(&self, fences: &[OffsetFence]) {
        let mut tpl = TopicPartitionList::new();
        {
            let mut owned = lock(&self.owned);
            for f in fences {
                if let Some(slot) = owned.get_mut(&(f.topic.clone(), f.partition)) {
                    *slot = Some(f.next);
                }
                if tpl
                    .add_partition_offset(&f.topic, f.partition, Offset::Offset(f.next))
                    .is_err()
                {
                    tracing::warn!(topic = %f.topic, partition = f.partition, "cannot build the Kafka commit");
                }
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            // PostgreSQL holds the truth; Kafka's copy only feeds lag tools.
            tracing::warn!(error = %e, "committing offsets to Kafka failed");
        }
    }

    /// While idle: a stored position that moved without this consumer (a replay) is followed.
    fn check_positions(&self) {
        let owned: Vec<(Tp, Option<i64>)> = lock(&self.owned)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if owned.is_empty() {
            return;
        }
        let keys: Vec<Tp> = owned.iter().map(|(k, _)| k.clone()).collect();
        let Ok(stored) = self
            .runtime
            .block_on(self.store.load_offsets(&self.group_id, &keys))
        else {
            return; // the next batch reports database trouble
        };
        let moved: Vec<OffsetFence> = owned
            .into_iter()
            .filter(|(tp, expected)| stored.get(tp).copied() != *expected)
            .map(|((topic, partition), expected)| OffsetFence {
                topic,
                partition,
                expected,
                next: 0,
            })
            .collect();
        if !moved.is_empty() {
            tracing::info!(
                partitions = moved.len(),
                "stored positions moved (replay): seeking"
            );
            self.rewind(&moved);
        }
    }

    /// After a fence failure: re-read the stored positions and seek there.
    fn rewind(&self, fences: &[OffsetFence]) {
        let partitions: Vec<Tp> = fences
            .iter()
            .map(|f| (f.topic.clone(), f.partition))
            .collect();
        let Some(stored) = load_offsets_retrying(
            &self.runtime,
            &self.store,
            &self.group_id,
            &partitions,
            &RetryPolicy {
                max_backoff: self.max_backoff,
                shutdown: self.shutdown.clone(),
            },
            &self.readiness,
            &self.metrics,
        ) else {
            return;
        };
        let mut owned = lock(&self.owned);
        for tp in partitions {
            let Some(slot) = owned.get_mut(&tp) else {
                continue;
            };
            let next = stored.get(&tp).copied();
            *slot = next;
            let offset = next.map_or(Offset::Stored, Offset::Offset);
            if let Err(e) = self
                .consumer
                .seek(&tp.0, tp.1, offset, Duration::from_secs(10))
            {
                tracing::warn!(error = %e, topic = %tp.0, partition = tp.1, "seek failed; dropping the partition");
                owned.remove(&tp);
            }
        }
    }
}

/// Reads stored offsets, retrying with backoff while the database is unavailable; `None` when
/// shutdown was requested first.
fn load_offsets_retrying(
    runtime: &tokio::runtime::Handle,
    store: &EventStore,
    group_id: &str,
    partitions: &[Tp],
    retry: &RetryPolicy,
    readiness: &Readiness,
    metrics: &PipelineMetrics,
) -> Option<HashMap<Tp, i64>> {
    let mut attempt = 0;
    loop {
        match runtime.block_on(store.load_offsets(group_id, partitions)) {
            Ok(stored) => return Some(stored),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "loading stored offsets failed; retrying");
                super::database_reachable(readiness, metrics, false);
                if !runtime.block_on(retry.wait(attempt)) {
                    return None;
                }
                attempt += 1;
            }
        }
    }
}

/// Runs change detection over the batch in message order, against the state read in the
/// transaction. Each entity's final state is written once.
fn detect_batch(
    rules: &RuleSet,
    selected: &[Selected],
    states: &mut HashMap<StateKey, crate::detect::AttributeState>,
    tally: &mut Tally,
) -> BatchChanges {
    *tally = Tally::default();
    let mut changes = BatchChanges::default();
    let mut dirty = HashSet::new();
    for item in selected {
        let Some(rule) = rules.get(item.rule) else {
            continue;
        };
        let mut seq = 0;
        for obs in &item.observations {
            let detection = rule.detector.detect(obs, &item.source, states);
            for outcome in &detection.outcomes {
                *tally.outcomes.entry(*outcome).or_default() += 1;
            }
            if let Some(event) = detection.event {
                *tally
                    .events_by_type
                    .entry(event.entity_type.clone())
                    .or_default() += 1;
                changes.events.push(NewEvent {
                    event,
                    source: item.source.clone(),
                    seq,
                });
                seq += 1;
            }
            dirty.extend(detection.dirty);
        }
    }
    changes.states = dirty
        .into_iter()
        .filter_map(|k| states.get(&k).cloned().map(|s| (k, s)))
        .collect();
    changes
}
