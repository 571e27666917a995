//! `status`: how far a consumer group has read, per topic partition — the position stored in
//! the EventDB (the truth, docs/architecture.md "Exactly once"), the offset committed to Kafka
//! (what lag tools and KEDA read), the log's start and end, the lag, and the newest event stored.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use super::{blocking, kafka_error, partitions_of, OpsError, KAFKA_TIMEOUT};
use crate::kafka::{self, ConnectionReporter, KafkaConfig, ProbeConsumer, Role};
use crate::store::EventStore;

/// A consumer group's position on every partition of the topics it has stored positions for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    /// The consumer group.
    pub group: String,
    /// When the figures were read.
    pub read_at: DateTime<Utc>,
    /// One entry per topic partition, by topic and partition.
    pub partitions: Vec<PartitionStatus>,
    /// The sums over all partitions.
    pub total: StatusTotal,
}

/// One topic partition of a [`GroupStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset stored in the EventDB (`None`: the group has read nothing here yet).
    pub stored_offset: Option<i64>,
    /// When the stored position last moved.
    pub stored_at: Option<DateTime<Utc>>,
    /// The next offset committed to Kafka for the group (`None`: none committed).
    pub committed_offset: Option<i64>,
    /// The first offset the broker retains (`None`: the broker no longer has the topic).
    pub log_start: Option<i64>,
    /// The offset the next message will get (high watermark).
    pub log_end: Option<i64>,
    /// Messages between the stored position (the log start when it is older or absent) and
    /// the log end.
    pub lag: Option<i64>,
    /// `event_time` of the event stored from the partition's highest offset.
    pub last_event_time: Option<DateTime<Utc>>,
    /// When that event was stored.
    pub last_event_stored_at: Option<DateTime<Utc>>,
}

/// The total line of a [`GroupStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusTotal {
    /// Number of partitions.
    pub partitions: usize,
    /// Number of partitions with a lag.
    pub lagging_partitions: usize,
    /// Sum of the lags.
    pub lag: i64,
    /// The newest `last_event_time`.
    pub last_event_time: Option<DateTime<Utc>>,
}

impl GroupStatus {
    fn new(group: String, read_at: DateTime<Utc>, partitions: Vec<PartitionStatus>) -> Self {
        let total = StatusTotal {
            partitions: partitions.len(),
            lagging_partitions: partitions
                .iter()
                .filter(|p| p.lag.is_some_and(|l| l > 0))
                .count(),
            lag: partitions.iter().filter_map(|p| p.lag).sum(),
            last_event_time: partitions.iter().filter_map(|p| p.last_event_time).max(),
        };
        Self {
            group,
            read_at,
            partitions,
            total,
        }
    }
}

/// The lag of a partition: what lies between where the group reads next and the log end.
pub fn lag(stored: Option<i64>, log_start: i64, log_end: i64) -> i64 {
    let next = stored.map_or(log_start, |s| s.max(log_start));
    (log_end - next).max(0)
}

/// What the broker says about one topic: per partition its log start and end.
type TopicLogs = HashMap<i32, (i64, i64)>;

/// Reads a group's status; keep one to read it again (its Kafka client is reused).
pub struct StatusReader {
    group: String,
    store: EventStore,
    consumer: Arc<ProbeConsumer>,
    reporter: ConnectionReporter,
    bootstrap: String,
}

impl std::fmt::Debug for StatusReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusReader")
            .field("group", &self.group)
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl StatusReader {
    /// A reader of `group`'s status. Connects lazily: an unreachable broker is reported by
    /// [`Self::read`].
    pub fn new(kafka: &KafkaConfig, store: EventStore, group: &str) -> Result<Self, OpsError> {
        let reporter = ConnectionReporter::new(kafka);
        let consumer =
            kafka::probe_consumer(kafka, Role::GroupProbe { group_id: group }, &reporter)?;
        Ok(Self {
            group: group.to_owned(),
            store,
            consumer: Arc::new(consumer),
            reporter,
            bootstrap: kafka.bootstrap_servers.clone(),
        })
    }

    /// The group this reader reads.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Reads the figures now. [`OpsError::UnknownGroup`] when the EventDB stores no position
    /// of the group; [`OpsError::Unreachable`] when the broker does not answer.
    pub async fn read(&self) -> Result<GroupStatus, OpsError> {
        let stored = self.store.group_offsets(&self.group).await?;
        if stored.is_empty() {
            return Err(OpsError::UnknownGroup {
                group: self.group.clone(),
                known: self.store.offset_groups().await?,
            });
        }
        let topics: BTreeSet<String> = stored.iter().map(|s| s.topic.clone()).collect();
        let stored: HashMap<(String, i32), _> = stored
            .into_iter()
            .map(|s| ((s.topic.clone(), s.partition), s))
            .collect();

        let (consumer, reporter, bootstrap) = (
            self.consumer.clone(),
            self.reporter.clone(),
            self.bootstrap.clone(),
        );
        let wanted: Vec<String> = topics.iter().cloned().collect();
        let (logs, committed) = blocking(move || {
            let mut logs: HashMap<String, TopicLogs> = HashMap::new();
            let mut tpl = TopicPartitionList::new();
            for topic in &wanted {
                let partitions = match partitions_of(&consumer, topic, &bootstrap, &reporter) {
                    Ok(p) => p,
                    // A topic deleted since: its stored positions are still shown.
                    Err(OpsError::UnknownTopic(_)) => continue,
                    Err(e) => return Err(e),
                };
                let mut topic_logs = TopicLogs::new();
                for p in partitions {
                    let marks = consumer
                        .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
                        .map_err(|e| kafka_error(e, &bootstrap, &reporter))?;
                    topic_logs.insert(p, marks);
                    tpl.add_partition(topic, p);
                }
                logs.insert(topic.clone(), topic_logs);
            }
            let mut committed = HashMap::new();
            if tpl.count() > 0 {
                let answer = consumer
                    .committed_offsets(tpl, KAFKA_TIMEOUT)
                    .map_err(|e| kafka_error(e, &bootstrap, &reporter))?;
                for e in answer.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        committed.insert((e.topic().to_owned(), e.partition()), o);
                    }
                }
            }
            Ok((logs, committed))
        })
        .await?;

        let mut keys: BTreeSet<(String, i32)> = stored.keys().cloned().collect();
        for (topic, partitions) in &logs {
            keys.extend(partitions.keys().map(|p| (topic.clone(), *p)));
        }
        let keys: Vec<(String, i32)> = keys.into_iter().collect();
        let last = self.store.last_events(&keys).await?;
        let partitions = keys
            .into_iter()
            .map(|key| {
                let marks = logs.get(&key.0).and_then(|l| l.get(&key.1)).copied();
                let position = stored.get(&key);
                let stored_offset = position.map(|s| s.next_offset);
                let last = last.get(&key);
                PartitionStatus {
                    stored_offset,
                    stored_at: position.map(|s| s.updated_at),
                    committed_offset: committed.get(&key).copied(),
                    log_start: marks.map(|m| m.0),
                    log_end: marks.map(|m| m.1),
                    lag: marks.map(|(low, high)| lag(stored_offset, low, high)),
                    last_event_time: last.map(|l| l.event_time),
                    last_event_stored_at: last.map(|l| l.inserted_at),
                    topic: key.0,
                    partition: key.1,
                }
            })
            .collect();
        Ok(GroupStatus::new(self.group.clone(), Utc::now(), partitions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_stored_position_or_the_log_start() {
        assert_eq!(lag(Some(40), 0, 100), 60);
        assert_eq!(lag(Some(100), 0, 100), 0);
        // Retention removed messages the group had not read: they cannot be read any more.
        assert_eq!(lag(Some(10), 30, 100), 70);
        assert_eq!(lag(None, 30, 100), 70);
        assert_eq!(lag(None, 0, 0), 0);
    }

    #[test]
    fn the_total_line_sums_the_partitions() {
        let t = |s| DateTime::from_timestamp(s, 0);
        let p = |partition, lag, last| PartitionStatus {
            topic: "t".into(),
            partition,
            stored_offset: None,
            stored_at: None,
            committed_offset: None,
            log_start: Some(0),
            log_end: Some(10),
            lag,
            last_event_time: last,
            last_event_stored_at: None,
        };
        let status = GroupStatus::new(
            "g".into(),
            Utc::now(),
            vec![p(0, Some(3), t(5)), p(1, Some(0), t(9)), p(2, None, None)],
        );
        assert_eq!(
            status.total,
            StatusTotal {
                partitions: 3,
                lagging_partitions: 1,
                lag: 3,
                last_event_time: t(9),
            }
        );
    }
}
