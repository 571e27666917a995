//! `event-manager replay`: move a consumer group's stored positions (the truth in PostgreSQL) back
//! to chosen offsets, the earliest retained offsets, or the first message at or after a time.
//!
//! Running consumers notice on their next batch (their offset fence fails, they re-read the
//! position and seek) or, when idle, at their periodic position check; stopped consumers start
//! there. Replayed messages go through the normal path: changes already known are no-ops, so the
//! EventDB keeps each change once. To rebuild an EventDB, start from an empty database and replay
//! from the earliest offsets.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::{self, Role};
use crate::store::{EventStore, StoreError};

/// Where to replay from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayTarget {
    /// This offset (clamped to what the broker retains).
    Offset(i64),
    /// The earliest offset the broker retains.
    Earliest,
    /// The first message whose timestamp is at or after this time.
    Time(DateTime<Utc>),
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Kafka could not be asked.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The EventDB could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request does not fit the topic.
    #[error("{0}")]
    Invalid(String),
}

/// The plan for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
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

/// How the offset of a time was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeLookup {
    /// The broker answered (ListOffsets by timestamp, `offsets_for_times`).
    Broker,
    /// The broker could not answer (librdkafka's MockCluster, the `dev-broker`), so message
    /// timestamps were read in a binary search.
    Search,
}

/// Computes where each partition would start.
pub async fn plan(
    config: &Config,
    store: &EventStore,
    group_id: &str,
    topic: &str,
    partitions: &[i32],
    target: ReplayTarget,
) -> Result<Vec<PartitionPlan>, ReplayError> {
    let consumer = kafka::probe_consumer(
        &config.kafka,
        Role::ReplayProbe { group_id },
        &kafka::ConnectionReporter::new(&config.kafka),
    )?;
    let topic_owned = topic.to_owned();
    let chosen = partitions.to_vec();
    let (consumer, mut plans) = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic_owned), Duration::from_secs(10))?;
        let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic_owned) else {
            return Err(ReplayError::Invalid(format!(
                "topic `{topic_owned}` does not exist"
            )));
        };
        if meta.error().is_some() || meta.partitions().is_empty() {
            return Err(ReplayError::Invalid(format!(
                "topic `{topic_owned}` does not exist"
            )));
        }
        let all: Vec<i32> = meta.partitions().iter().map(|p| p.id()).collect();
        let selected = if chosen.is_empty() {
            all.clone()
        } else {
            chosen
        };
        let mut plans = Vec::new();
        for p in selected {
            if !all.contains(&p) {
                return Err(ReplayError::Invalid(format!(
                    "topic `{topic_owned}` has no partition {p} (it has {})",
                    all.len()
                )));
            }
            let (low, high) =
                consumer.fetch_watermarks(&topic_owned, p, Duration::from_secs(10))?;
            let (target, time_lookup) = match target {
                ReplayTarget::Offset(o) => (o.clamp(low, high), None),
                ReplayTarget::Earliest => (low, None),
                ReplayTarget::Time(t) => {
                    offset_for_time(&consumer, &topic_owned, p, low, high, t.timestamp_millis())?
                }
            };
            plans.push(PartitionPlan {
                partition: p,
                low,
                high,
                stored: None,
                target,
                time_lookup,
            });
        }
        Ok((consumer, plans))
    })
    .await
    .map_err(|e| ReplayError::Invalid(format!("replay planning failed: {e}")))??;
    drop(consumer);
    let keys: Vec<(String, i32)> = plans
        .iter()
        .map(|p| (topic.to_owned(), p.partition))
        .collect();
    let stored = store.load_offsets(group_id, &keys).await?;
    for p in &mut plans {
        p.stored = stored.get(&(topic.to_owned(), p.partition)).copied();
    }
    Ok(plans)
}

/// Writes the planned positions.
pub async fn apply(
    store: &EventStore,
    group_id: &str,
    topic: &str,
    plans: &[PartitionPlan],
) -> Result<(), ReplayError> {
    let positions: Vec<(String, i32, i64)> = plans
        .iter()
        .map(|p| (topic.to_owned(), p.partition, p.target))
        .collect();
    store.set_offsets(group_id, &positions).await?;
    Ok(())
}

/// The first offset in `[low, high)` whose message timestamp is at or after `ts_ms`, else `high`,
/// and how it was found. Asks the broker first (ListOffsets by timestamp: the first offset whose
/// timestamp is at or after the time, or none when every message is older). A broker that cannot
/// answer by time (librdkafka's MockCluster behind `dev-broker` and `demo` answers an error, or
/// an offset outside the partition) is searched instead by reading message timestamps (binary
/// search; Kafka timestamps are assumed non-decreasing).
fn offset_for_time(
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
    if let Ok(answer) = consumer.offsets_for_times(query, Duration::from_secs(10)) {
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
