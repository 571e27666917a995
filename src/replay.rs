//! `event-manager replay`: move a consumer group's stored positions (the truth in PostgreSQL) to
//! chosen offsets, the earliest retained or the latest offsets, a shift from where they are, or
//! the first message at or after a time; planned first, written only when asked.
//!
//! Running consumers notice on their next batch (their offset fence fails, they re-read the
//! position and seek) or, when idle, at their periodic position check; stopped consumers start
//! there. Replayed messages go through the normal path: changes already known are no-ops, so the
//! EventDB keeps each change once. To rebuild an EventDB, start from an empty database and replay
//! from the earliest offsets.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::{self, ConnectionReporter, KafkaConfig, Role};
use crate::ops::{kafka_error, partitions_of, OpsError, KAFKA_TIMEOUT};
use crate::store::{EventStore, StoreError};

/// Where to replay from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayTarget {
    /// This offset (clamped to what the broker retains).
    Offset(i64),
    /// The earliest offset the broker retains.
    Earliest,
    /// The log end: skip everything not read yet.
    Latest,
    /// The stored position moved by this many offsets (negative: back), clamped to what the
    /// broker retains; from the log start where nothing is stored.
    ShiftBy(i64),
    /// The first message whose timestamp is at or after this time.
    Time(DateTime<Utc>),
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Kafka could not be asked, or does not know the topic or partition.
    #[error(transparent)]
    Kafka(#[from] OpsError),
    /// The EventDB could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request does not fit the topic.
    #[error("{0}")]
    Invalid(String),
}

impl From<rdkafka::error::KafkaError> for ReplayError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        ReplayError::Kafka(OpsError::Kafka(e))
    }
}

/// The plan for one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionPlan {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Earliest retained offset.
    pub low: i64,
    /// Next offset to be written (high watermark).
    pub high: i64,
    /// Stored position before the replay (`None`: nothing stored).
    pub stored: Option<i64>,
    /// New position.
    pub target: i64,
    /// For a time target: how the offset was found (`None` for other targets, or when the
    /// partition is empty).
    pub time_lookup: Option<TimeLookup>,
}

impl PartitionPlan {
    /// Messages to read from the new position to the log end.
    pub fn lag_after(&self) -> i64 {
        (self.high - self.target).max(0)
    }
}

/// How the offset of a time was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimeLookup {
    /// The broker answered (ListOffsets by timestamp, `offsets_for_times`).
    Broker,
    /// The broker could not answer (librdkafka's MockCluster, the `dev-broker`), so message
    /// timestamps were read in a binary search.
    Search,
}

/// The topics `group_id` has stored positions for (`--all-topics`).
pub async fn stored_topics(store: &EventStore, group_id: &str) -> Result<Vec<String>, ReplayError> {
    let topics: BTreeSet<String> = store
        .group_offsets(group_id)
        .await?
        .into_iter()
        .map(|o| o.topic)
        .collect();
    if topics.is_empty() {
        return Err(ReplayError::Kafka(OpsError::UnknownGroup {
            group: group_id.to_owned(),
            known: store.offset_groups().await?,
        }));
    }
    Ok(topics.into_iter().collect())
}

/// Computes where each partition of each topic would start (every partition of a topic when
/// `partitions` is empty, else those, which every topic must have).
pub async fn plan_topics(
    kafka: &KafkaConfig,
    store: &EventStore,
    group_id: &str,
    topics: &[String],
    partitions: &[i32],
    target: ReplayTarget,
) -> Result<Vec<PartitionPlan>, ReplayError> {
    let mut plans = Vec::new();
    for topic in topics {
        plans.extend(plan(kafka, store, group_id, topic, partitions, target).await?);
    }
    Ok(plans)
}

/// A partition as the broker describes it, and the offset of a time target.
struct Found {
    partition: i32,
    low: i64,
    high: i64,
    time: Option<(i64, Option<TimeLookup>)>,
}

/// Computes where each partition would start.
pub async fn plan(
    kafka: &KafkaConfig,
    store: &EventStore,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
    target: ReplayTarget,
) -> Result<Vec<PartitionPlan>, ReplayError> {
    if let ReplayTarget::Time(t) = target {
        if t > Utc::now() {
            return Err(ReplayError::Invalid(format!(
                "{} is in the future: no message is that new",
                t.to_rfc3339()
            )));
        }
    }
    // Read before the log end, which only grows: a running group's position never appears
    // past it.
    let stored: HashMap<i32, i64> = store
        .group_offsets(group_id)
        .await?
        .into_iter()
        .filter(|o| o.topic == topic)
        .map(|o| (o.partition, o.next_offset))
        .collect();
    let reporter = ConnectionReporter::new(kafka);
    let consumer = kafka::probe_consumer(kafka, Role::ReplayProbe { group_id }, &reporter)?;
    let topic_owned = topic.to_owned();
    let chosen = partitions.to_vec();
    let bootstrap = kafka.bootstrap_servers.clone();
    let found = tokio::task::spawn_blocking(move || {
        let all = partitions_of(&consumer, &topic_owned, &bootstrap, &reporter)?;
        let selected = if chosen.is_empty() {
            all.clone()
        } else {
            chosen
        };
        let mut found = Vec::new();
        for p in selected {
            if !all.contains(&p) {
                return Err(ReplayError::Kafka(OpsError::UnknownPartition {
                    topic: topic_owned.clone(),
                    partition: p,
                    count: all.len(),
                }));
            }
            let (low, high) = consumer
                .fetch_watermarks(&topic_owned, p, KAFKA_TIMEOUT)
                .map_err(|e| kafka_error(e, &bootstrap, &reporter))?;
            let time = match target {
                ReplayTarget::Time(t) => {
                    Some(offset_for_time(&consumer, &topic_owned, p, low, high, t)?)
                }
                _ => None,
            };
            found.push(Found {
                partition: p,
                low,
                high,
                time,
            });
        }
        Ok(found)
    })
    .await
    .map_err(|e| ReplayError::Invalid(format!("replay planning failed: {e}")))??;
    Ok(found
        .into_iter()
        .map(|f| {
            let current = stored.get(&f.partition).copied();
            let (target, time_lookup) = match (target, f.time) {
                (_, Some(time)) => time,
                (ReplayTarget::Offset(o), _) => (o.clamp(f.low, f.high), None),
                (ReplayTarget::Earliest, _) => (f.low, None),
                (ReplayTarget::Latest, _) => (f.high, None),
                (ReplayTarget::ShiftBy(n), _) => (
                    current
                        .unwrap_or(f.low)
                        .saturating_add(n)
                        .clamp(f.low, f.high),
                    None,
                ),
                (ReplayTarget::Time(_), None) => (f.high, None),
            };
            PartitionPlan {
                topic: topic.to_owned(),
                partition: f.partition,
                low: f.low,
                high: f.high,
                stored: current,
                target,
                time_lookup,
            }
        })
        .collect())
}

/// Writes the planned positions.
pub async fn apply(
    store: &EventStore,
    group_id: &str,
    plans: &[PartitionPlan],
) -> Result<(), ReplayError> {
    let positions: Vec<(String, i32, i64)> = plans
        .iter()
        .map(|p| (p.topic.clone(), p.partition, p.target))
        .collect();
    store.set_offsets(group_id, &positions).await?;
    Ok(())
}

/// The first offset in `[low, high)` whose message timestamp is at or after `time`, else
/// `high`, and how it was found ([`find_offset_for_time`]). A time older than the oldest
/// retained message of a partition whose log no longer starts at 0 is outside the log:
/// messages from that time were deleted by retention, so the replay could not start there.
fn offset_for_time(
    consumer: &kafka::ProbeConsumer,
    topic: &str,
    partition: i32,
    low: i64,
    high: i64,
    time: DateTime<Utc>,
) -> Result<(i64, Option<TimeLookup>), ReplayError> {
    let ts_ms = time.timestamp_millis();
    let found = find_offset_for_time(consumer, topic, partition, low, high, ts_ms)?;
    if found.0 == low && low > 0 {
        if let Some((_, oldest)) = read_at(consumer, topic, partition, low)? {
            if oldest > ts_ms {
                let oldest = DateTime::from_timestamp_millis(oldest)
                    .map_or_else(|| oldest.to_string(), |t| t.to_rfc3339());
                return Err(ReplayError::Invalid(format!(
                    "{} is outside the log of {topic}/{partition}: its oldest retained message \
                     (offset {low}) is from {oldest}, and older ones were deleted by retention \
                     (replay --to-earliest reads what is retained)",
                    time.to_rfc3339()
                )));
            }
        }
    }
    Ok(found)
}

/// The first offset in `[low, high)` whose message timestamp is at or after `ts_ms`, else `high`,
/// and how it was found. Asks the broker first (ListOffsets by timestamp: the first offset whose
/// timestamp is at or after the time, or none when every message is older). A broker that cannot
/// answer by time (librdkafka's MockCluster behind `dev-broker` and `demo` answers an error, or
/// an offset outside the partition) is searched instead by reading message timestamps (binary
/// search; Kafka timestamps are assumed non-decreasing).
fn find_offset_for_time(
    consumer: &kafka::ProbeConsumer,
    topic: &str,
    partition: i32,
    low: i64,
    high: i64,
    ts_ms: i64,
) -> Result<(i64, Option<TimeLookup>), ReplayError> {
    if low >= high {
        return Ok((high, None));
    }
    let mut query = TopicPartitionList::new();
    query.add_partition_offset(topic, partition, Offset::Offset(ts_ms))?;
    if let Ok(answer) = consumer.offsets_for_times(query, KAFKA_TIMEOUT) {
        if let Some(entry) = answer.find_partition(topic, partition) {
            if entry.error().is_ok() {
                match entry.offset() {
                    Offset::Offset(o) if o >= low && o <= high => {
                        return Ok((o, Some(TimeLookup::Broker)));
                    }
                    // No message at or after the time: the end. (librdkafka's MockCluster
                    // answers the same for every time: believed when the last message is older.)
                    Offset::End => {
                        if let Some((_, ts)) = read_at(consumer, topic, partition, high - 1)? {
                            if ts < ts_ms {
                                return Ok((high, Some(TimeLookup::Broker)));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    // Search by reading timestamps.
    let (mut lo, mut hi) = (low, high);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match read_at(consumer, topic, partition, mid)? {
            Some((offset, ts)) if ts >= ts_ms => hi = mid.min(offset),
            Some((offset, _)) => lo = offset + 1,
            None => hi = mid,
        }
    }
    Ok((lo, Some(TimeLookup::Search)))
}

/// Reads the first message at or after `offset`: its offset and timestamp.
fn read_at(
    consumer: &kafka::ProbeConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<(i64, i64)>, ReplayError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.partition() == partition && m.offset() >= offset => {
                let ts = m.timestamp().to_millis().unwrap_or(i64::MIN);
                return Ok(Some((m.offset(), ts)));
            }
            Some(Err(e)) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(None)
}
