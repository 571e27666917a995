//! The Kafka side of the consumer: the consumer-group member, its librdkafka callbacks, and the
//! positions it believes in (docs/architecture.md, "Exactly once").
//!
//! Offsets live in PostgreSQL (truth) and Kafka (for lag tools and KEDA). On assignment every
//! partition starts at the offset stored in PostgreSQL; after a commit the member's positions
//! move on and Kafka gets a copy; after a fence, or when a replay moved the stored offsets, it
//! re-reads them and seeks there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::Producer as _;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use super::internal_events::{
    AssignmentChanged, ConsumerLag, Instruments, OffsetsUnreadable, PartitionRevoked, RetentionGap,
};
use crate::health::Readiness;
use crate::kafka::{self, KafkaConfig, Role};
use crate::retry::RetryPolicy;
use crate::store::{EventStore, OffsetFence, StateCache};

/// A topic partition.
pub(super) type Tp = (String, i32);

/// The partitions this member owns and the stored next offset it believes in for each
/// (`None`: nothing stored yet). Shared by the rebalance callback and the loop.
#[derive(Debug, Clone, Default)]
pub(super) struct Positions(Arc<Mutex<HashMap<Tp, Option<i64>>>>);

impl Positions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Tp, Option<i64>>> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the positions, for one batch.
    pub(super) fn snapshot(&self) -> HashMap<Tp, Option<i64>> {
        self.lock().clone()
    }
}

/// Reads the offsets stored in PostgreSQL from the consumer thread.
#[derive(Debug, Clone)]
pub(super) struct StoredOffsets {
    runtime: tokio::runtime::Handle,
    store: EventStore,
    group_id: String,
    retry: RetryPolicy,
    instruments: Instruments,
}

impl StoredOffsets {
    /// Reads `group_id`'s offsets from `store` on `runtime`, waiting out outages by `retry`.
    pub(super) fn new(
        runtime: tokio::runtime::Handle,
        store: EventStore,
        group_id: String,
        retry: RetryPolicy,
        instruments: Instruments,
    ) -> Self {
        Self {
            runtime,
            store,
            group_id,
            retry,
            instruments,
        }
    }

    /// Reads stored offsets, retrying with backoff while the database is unavailable; `None`
    /// when shutdown was requested first.
    fn read_retrying(&self, partitions: &[Tp]) -> Option<HashMap<Tp, i64>> {
        let mut attempt = 0;
        loop {
            match self
                .runtime
                .block_on(self.store.load_offsets(&self.group_id, partitions))
            {
                Ok(stored) => return Some(stored),
                Err(error) => {
                    self.instruments.emit(OffsetsUnreadable {
                        error: &error,
                        attempt,
                    });
                    if !self.runtime.block_on(self.retry.wait(attempt)) {
                        return None;
                    }
                    attempt += 1;
                }
            }
        }
    }
}

/// librdkafka callbacks: rebalances (seek to stored offsets), statistics (lag), errors (one log
/// line per cause, and `/readyz` false naming it, see src/kafka/connection.rs).
pub(super) struct GroupContext {
    connection: kafka::ConnectionReporter,
    offsets: StoredOffsets,
    positions: Positions,
    /// What the consumer remembers of its partitions' entities: forgotten as they come and go.
    cache: Arc<StateCache>,
}

impl GroupContext {
    fn instruments(&self) -> &Instruments {
        &self.offsets.instruments
    }

    fn readiness(&self) -> &Readiness {
        self.instruments().readiness()
    }

    /// Sets each newly assigned partition's start to the offset stored in PostgreSQL and records
    /// ownership. Retries while the database is unavailable: starting elsewhere could skip or
    /// repeat messages.
    fn position_at_stored_offsets(&self, tpl: &mut TopicPartitionList) {
        let partitions: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let Some(stored) = self.offsets.read_retrying(&partitions) else {
            return; // shutting down: own nothing, so nothing is processed
        };
        let mut owned = self.positions.lock();
        for tp in partitions {
            let next = stored.get(&tp).copied();
            if let Some(next) = next {
                if let Err(e) = tpl.set_partition_offset(&tp.0, tp.1, Offset::Offset(next)) {
                    tracing::error!(error = %e, topic = %tp.0, partition = tp.1, "setting start offset failed");
                    continue;
                }
            }
            tracing::info!(topic = %tp.0, partition = tp.1, stored_offset = ?next, "partition assigned");
            self.cache.forget(&tp.0, tp.1);
            owned.insert(tp, next);
        }
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, stats: Statistics) {
        let owned = self.positions.lock();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0
                    && p.consumer_lag >= 0
                    && owned.contains_key(&(topic.clone(), *partition))
                {
                    self.instruments().emit(ConsumerLag {
                        topic,
                        partition: *partition,
                        lag: p.consumer_lag,
                    });
                }
            }
        }
        let up = stats.brokers.values().any(|b| b.state == "UP");
        if up {
            self.readiness().touch_broker_metadata();
            self.connection.connected();
            self.readiness().set_kafka_error(None);
        }
        self.readiness().set_broker_up(up);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if let Some(cause) = self.connection.log(level, fac, message) {
            self.readiness().set_kafka_error(Some(cause.to_string()));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // Not ready until a broker answers again (the next statistics report says so).
            self.readiness().set_broker_up(false);
        }
        // Transient failures (a broker restarting, an idle connection closed) are left to the
        // assignment and metadata checks of `/readyz`; a misconfiguration is named there.
        if let Some(cause) = self.connection.report(&error, reason) {
            if cause.is_misconfiguration() {
                self.readiness().set_kafka_error(Some(cause.to_string()));
            }
        }
    }
}

impl ConsumerContext for GroupContext {
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
                    let mut owned = self.positions.lock();
                    for e in tpl.elements() {
                        owned.remove(&(e.topic().to_owned(), e.partition()));
                        self.cache.forget(e.topic(), e.partition());
                        self.instruments().emit(PartitionRevoked {
                            topic: e.topic(),
                            partition: e.partition(),
                        });
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
                self.positions.lock().clear();
                self.cache.forget_all();
                let _ = consumer.unassign();
            }
        }
        let partitions = self.positions.lock().len();
        self.instruments().emit(AssignmentChanged { partitions });
    }
}

/// The consumer-group member: polls, commits to Kafka, and follows the stored positions.
pub(super) struct GroupMember {
    consumer: BaseConsumer<GroupContext>,
    positions: Positions,
    offsets: StoredOffsets,
    /// `kafka.sasl.password_file`, read again while idle so a rotated password is used.
    password_file: Option<kafka::PasswordFile>,
    cache: Arc<StateCache>,
}

impl GroupMember {
    /// Creates the consumer with its callbacks and subscribes to `topics`.
    pub(super) fn subscribe(
        config: &KafkaConfig,
        connection: kafka::ConnectionReporter,
        offsets: StoredOffsets,
        topics: &[String],
        cache: Arc<StateCache>,
    ) -> KafkaResult<Self> {
        let positions = Positions::default();
        let context = GroupContext {
            connection,
            offsets: offsets.clone(),
            positions: positions.clone(),
            cache: Arc::clone(&cache),
        };
        let consumer: BaseConsumer<GroupContext> =
            kafka::client_config(config, Role::Consumer)?.create_with_context(context)?;
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&refs)?;
        tracing::info!(topics = ?topics, group = %config.group_id, "subscribed");
        Ok(Self {
            consumer,
            positions,
            offsets,
            password_file: kafka::PasswordFile::watch(&config.sasl),
            cache,
        })
    }

    /// What the consumer remembers of its partitions' entities (docs/architecture.md, "The
    /// state cache").
    pub(super) fn state_cache(&self) -> &StateCache {
        &self.cache
    }

    /// The partitions owned and the positions believed in.
    pub(super) fn positions(&self) -> &Positions {
        &self.positions
    }

    /// Waits up to `wait` for the next message (callbacks run in here).
    pub(super) fn poll(&self, wait: Duration) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        self.consumer.poll(wait)
    }

    /// Leaves the group; a final poll serves the revocation callback of the unsubscribe.
    pub(super) fn leave(&self) {
        self.consumer.unsubscribe();
        let _ = self.consumer.poll(Duration::from_millis(100));
    }

    /// Hands a changed `kafka.sasl.password_file` to the consumer and to `producer`.
    pub(super) fn refresh_password(&self, producer: &kafka::Producer) {
        let Some(watch) = &self.password_file else {
            return;
        };
        let Some(password) = watch.changed() else {
            return;
        };
        let applied = watch
            .apply(self.consumer.client(), &password)
            .and_then(|()| watch.apply(producer.client(), &password));
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

    /// Offsets `want..next` were not delivered. Transaction markers, aborted transactions and
    /// compaction leave such holes too; retention is told apart by the partition's log start
    /// having passed `want`: librdkafka found the stored position out of range and applied
    /// `auto.offset.reset` (README.md, `kafka.auto_offset_reset`). Counted and warned once per gap;
    /// the consumer moves on.
    pub(super) fn report_retention_gap(&self, tp: &Tp, want: i64, next: i64) {
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
        self.offsets.instruments.emit(RetentionGap {
            topic,
            partition,
            want,
            next,
            log_start,
        });
    }

    /// After a batch committed in PostgreSQL: its positions are the new truth, and Kafka gets a
    /// copy.
    pub(super) fn committed(&self, fences: &[OffsetFence]) {
        let mut tpl = TopicPartitionList::new();
        {
            let mut owned = self.positions.lock();
            for f in fences {
                // A partition revoked while its batch was stored is its new owner's to commit.
                let Some(slot) = owned.get_mut(&(f.topic.clone(), f.partition)) else {
                    continue;
                };
                *slot = Some(f.next);
                if tpl
                    .add_partition_offset(&f.topic, f.partition, Offset::Offset(f.next))
                    .is_err()
                {
                    tracing::warn!(topic = %f.topic, partition = f.partition, "cannot build the Kafka commit");
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            // PostgreSQL holds the truth; Kafka's copy only feeds lag tools.
            tracing::warn!(error = %e, "committing offsets to Kafka failed");
        }
    }

    /// While idle: a stored position that moved without this consumer (a replay) is followed.
    pub(super) fn check_positions(&self) {
        let owned: Vec<(Tp, Option<i64>)> = self
            .positions
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if owned.is_empty() {
            return;
        }
        let keys: Vec<Tp> = owned.iter().map(|(k, _)| k.clone()).collect();
        let StoredOffsets {
            runtime,
            store,
            group_id,
            ..
        } = &self.offsets;
        let Ok(stored) = runtime.block_on(store.load_offsets(group_id, &keys)) else {
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
    pub(super) fn rewind(&self, fences: &[OffsetFence]) {
        let partitions: Vec<Tp> = fences
            .iter()
            .map(|f| (f.topic.clone(), f.partition))
            .collect();
        // Another consumer (or a replay) moved these partitions: what they did is unknown.
        for (topic, partition) in &partitions {
            self.cache.forget(topic, *partition);
        }
        let Some(stored) = self.offsets.read_retrying(&partitions) else {
            return;
        };
        let mut owned = self.positions.lock();
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
