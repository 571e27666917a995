//! Dead letters (`dlq list | show | redrive`): what the pipeline rejected and why, read from a
//! dead-letter topic by the headers the pipeline gives them (`pipeline/dead_letter.rs`), and
//! sent back to their source topic after a fix.
//!
//! Bodies may hold patient data: lists and summaries never carry them; [`show`] returns one only
//! when asked. A redriven message goes through the normal path: its changes are stored when it
//! now decodes (a second copy changes nothing, docs/architecture.md "Change detection"), and it
//! is dead-lettered again when it still fails.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use super::{blocking, kafka_error, partitions_of, OpsError, KAFKA_TIMEOUT};
use crate::kafka::{self, ConnectionReporter, KafkaConfig, ProbeConsumer, Role};
use crate::pipeline::dead_letter::{
    DETAIL_HEADER, FORMAT_HEADER, REASON_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
};

/// Header a redriven message carries: the dead letter it was produced from, as
/// `<dead-letter topic>/<partition>/<offset>`.
pub(crate) const REDRIVE_HEADER: &str = "em-redriven-from";

/// The headers the pipeline adds to a dead letter (and [`REDRIVE_HEADER`]): a redrive removes
/// them, so that the message goes back as its producer wrote it.
const ADDED_HEADERS: &[&str] = &[
    REASON_HEADER,
    DETAIL_HEADER,
    SOURCE_TOPIC_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_OFFSET_HEADER,
    FORMAT_HEADER,
    REDRIVE_HEADER,
];

/// How long a read of a dead-letter topic may go without a message or an end of partition.
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// One dead letter, without its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterSummary {
    /// Its partition in the dead-letter topic.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// When it was dead-lettered (its timestamp).
    pub time: Option<DateTime<Utc>>,
    /// The topic it was read from.
    pub source_topic: Option<String>,
    /// The partition it was read from.
    pub source_partition: Option<i32>,
    /// Its offset there.
    pub source_offset: Option<i64>,
    /// The reason code (`missing_field`, `invalid_encoding`, …).
    pub reason: Option<String>,
    /// What the decoder said (never a body or a patient reference).
    pub detail: Option<String>,
    /// The rule's format.
    pub format: Option<String>,
    /// The dead letter it was redriven from, when it was.
    pub redriven_from: Option<String>,
}

/// Which dead letters to list or redrive; every condition set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// With this reason code.
    pub reason: Option<String>,
    /// Read from this source topic.
    pub source_topic: Option<String>,
    /// In this partition of the dead-letter topic.
    pub partition: Option<i32>,
    /// At this offset of the dead-letter topic.
    pub offset: Option<i64>,
    /// At most this many, the newest.
    pub limit: Option<usize>,
}

impl DeadLetterFilter {
    fn matches(&self, letter: &DeadLetterSummary) -> bool {
        self.since
            .is_none_or(|since| letter.time.is_some_and(|t| t >= since))
            && self
                .reason
                .as_ref()
                .is_none_or(|r| letter.reason.as_ref() == Some(r))
            && self
                .source_topic
                .as_ref()
                .is_none_or(|t| letter.source_topic.as_ref() == Some(t))
            && self.partition.is_none_or(|p| letter.partition == p)
            && self.offset.is_none_or(|o| letter.offset == o)
    }
}

/// The dead letters of a topic that match a filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterList {
    /// The dead-letter topic.
    pub topic: String,
    /// Dead letters read.
    pub scanned: u64,
    /// Dead letters that match the filter.
    pub matched: u64,
    /// The matching dead letters (the newest `limit` of them), oldest first.
    pub letters: Vec<DeadLetterSummary>,
    /// Matching dead letters by reason code (all of them, not only those listed).
    pub by_reason: BTreeMap<String, u64>,
}

/// One header of a dead letter, its value read as UTF-8 (invalid bytes replaced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderText {
    /// Name.
    pub key: String,
    /// Value (`None`: a null header).
    pub value: Option<String>,
}

/// One dead letter in full: its headers, and its body only when asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterDetail {
    /// The dead-letter topic.
    pub topic: String,
    /// What the headers say.
    pub summary: DeadLetterSummary,
    /// The message key (UTF-8, invalid bytes replaced).
    pub key: Option<String>,
    /// Every header, in order (the producer's and the pipeline's).
    pub headers: Vec<HeaderText>,
    /// Size of the body in bytes.
    pub body_bytes: usize,
    /// The body, when asked for.
    #[serde(skip)]
    pub body: Option<Vec<u8>>,
}

/// A dead letter a redrive sends (or would send) back, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveItem {
    /// The dead letter.
    pub letter: DeadLetterSummary,
    /// The offset it got in its source partition (`None`: dry run, or not sent).
    pub produced_offset: Option<i64>,
}

/// A dead letter a redrive cannot send back, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveSkip {
    /// The dead letter.
    pub letter: DeadLetterSummary,
    /// Why.
    pub why: String,
}

/// What a redrive did or would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// The dead-letter topic.
    pub topic: String,
    /// Whether the messages were produced (else a dry run).
    pub executed: bool,
    /// The dead letters sent back (or to send), oldest first.
    pub items: Vec<RedriveItem>,
    /// Selected dead letters that cannot go back.
    pub skipped: Vec<RedriveSkip>,
}

fn header_text(value: Option<&[u8]>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Reads what the pipeline's headers say of a dead letter (the last occurrence of each wins:
/// the pipeline appends its headers after the producer's).
fn summarize(m: &BorrowedMessage<'_>) -> DeadLetterSummary {
    let mut found: HashMap<&str, String> = HashMap::new();
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            if ADDED_HEADERS.contains(&h.key) {
                if let Some(v) = header_text(h.value) {
                    found.insert(h.key, v);
                }
            }
        }
    }
    let mut take = |k: &str| found.remove(k);
    DeadLetterSummary {
        partition: m.partition(),
        offset: m.offset(),
        time: m
            .timestamp()
            .to_millis()
            .and_then(DateTime::from_timestamp_millis),
        source_topic: take(SOURCE_TOPIC_HEADER),
        source_partition: take(SOURCE_PARTITION_HEADER).and_then(|p| p.parse().ok()),
        source_offset: take(SOURCE_OFFSET_HEADER).and_then(|o| o.parse().ok()),
        reason: take(REASON_HEADER),
        detail: take(DETAIL_HEADER),
        format: take(FORMAT_HEADER),
        redriven_from: take(REDRIVE_HEADER),
    }
}

/// A dead-letter topic's reader: a consumer of its own (no group membership).
struct Reader {
    consumer: ProbeConsumer,
    reporter: ConnectionReporter,
    bootstrap: String,
    topic: String,
}

impl Reader {
    fn new(kafka: &KafkaConfig, topic: &str) -> Result<Self, OpsError> {
        let reporter = ConnectionReporter::new(kafka);
        let consumer = kafka::probe_consumer(kafka, Role::DeadLetterReader, &reporter)?;
        Ok(Self {
            consumer,
            reporter,
            bootstrap: kafka.bootstrap_servers.clone(),
            topic: topic.to_owned(),
        })
    }

    fn fail(&self, e: KafkaError) -> OpsError {
        kafka_error(e, &self.bootstrap, &self.reporter)
    }

    /// Partitions (all, or the one asked for) with their log start and end.
    fn logs(&self, only: Option<i32>) -> Result<Vec<(i32, i64, i64)>, OpsError> {
        let all = partitions_of(&self.consumer, &self.topic, &self.bootstrap, &self.reporter)?;
        if let Some(p) = only {
            if !all.contains(&p) {
                return Err(OpsError::UnknownPartition {
                    topic: self.topic.clone(),
                    partition: p,
                    count: all.len(),
                });
            }
        }
        all.into_iter()
            .filter(|p| only.is_none_or(|o| o == *p))
            .map(|p| {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(&self.topic, p, KAFKA_TIMEOUT)
                    .map_err(|e| self.fail(e))?;
                Ok((p, low, high))
            })
            .collect()
    }

    /// Where a partition's read starts for messages at or after `since`: the broker's answer
    /// by time when it gives one inside the log, else the log start (the filter still applies).
    fn start_at(&self, partition: i32, low: i64, high: i64, since: Option<DateTime<Utc>>) -> i64 {
        let Some(since) = since else { return low };
        let mut query = TopicPartitionList::new();
        if query
            .add_partition_offset(
                &self.topic,
                partition,
                Offset::Offset(since.timestamp_millis()),
            )
            .is_err()
        {
            return low;
        }
        match self.consumer.offsets_for_times(query, KAFKA_TIMEOUT) {
            Ok(answer) => match answer
                .find_partition(&self.topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) if (low..=high).contains(&o) => o,
                _ => low,
            },
            Err(_) => low,
        }
    }

    /// Calls `visit` with every message of the chosen partitions from their start up to the
    /// log end as it was when the read began; returns how many were read.
    fn scan(
        &self,
        partition: Option<i32>,
        since: Option<DateTime<Utc>>,
        mut visit: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<u64, OpsError> {
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for (p, low, high) in self.logs(partition)? {
            let start = self.start_at(p, low, high, since);
            if start < high {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(start))?;
                ends.insert(p, high);
            }
        }
        if ends.is_empty() {
            return Ok(0);
        }
        self.consumer.assign(&tpl)?;
        let mut read = 0;
        let mut last_progress = Instant::now();
        while !ends.is_empty() {
            match self.consumer.poll(std::time::Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last_progress = Instant::now();
                    let Some(&end) = ends.get(&m.partition()) else {
                        continue;
                    };
                    if m.offset() < end {
                        read += 1;
                        visit(&m);
                    }
                    if m.offset() + 1 >= end {
                        ends.remove(&m.partition());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    last_progress = Instant::now();
                    ends.remove(&p);
                }
                Some(Err(e)) => return Err(self.fail(e)),
                None => {}
            }
            if last_progress.elapsed() > STALL {
                return Err(OpsError::Unreachable {
                    bootstrap: self.bootstrap.clone(),
                    cause: self.reporter.current().unwrap_or_else(|| {
                        format!("reading `{}` stalled for {STALL:?}", self.topic)
                    }),
                });
            }
        }
        Ok(read)
    }

    /// The message at `offset` of `partition`, handed to `take`.
    fn one<T>(
        &self,
        partition: i32,
        offset: i64,
        take: impl FnOnce(&BorrowedMessage<'_>) -> T,
    ) -> Result<T, OpsError> {
        let (_, low, high) = self.logs(Some(partition))?[0];
        let missing = || OpsError::NoMessage {
            topic: self.topic.clone(),
            partition,
            offset,
            low,
            high,
        };
        if !(low..high).contains(&offset) {
            return Err(missing());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        self.consumer.assign(&tpl)?;
        let started = Instant::now();
        while started.elapsed() < STALL {
            match self.consumer.poll(std::time::Duration::from_millis(200)) {
                Some(Ok(m)) if m.partition() == partition && m.offset() == offset => {
                    return Ok(take(&m));
                }
                Some(Ok(m)) if m.partition() == partition && m.offset() > offset => {
                    return Err(missing());
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Err(missing()),
                Some(Err(e)) => return Err(self.fail(e)),
                _ => {}
            }
        }
        Err(OpsError::Unreachable {
            bootstrap: self.bootstrap.clone(),
            cause: self
                .reporter
                .current()
                .unwrap_or_else(|| format!("reading `{}` stalled for {STALL:?}", self.topic)),
        })
    }
}

/// The newest `limit` of `letters` (all without a limit), oldest first.
fn newest(mut letters: Vec<DeadLetterSummary>, limit: Option<usize>) -> Vec<DeadLetterSummary> {
    letters.sort_by_key(|l| (l.time, l.partition, l.offset));
    if let Some(limit) = limit {
        let drop = letters.len().saturating_sub(limit);
        letters.drain(..drop);
    }
    letters
}

/// Lists the dead letters of `topic` that match `filter`, without bodies.
pub async fn list(
    kafka: &KafkaConfig,
    topic: &str,
    filter: &DeadLetterFilter,
) -> Result<DeadLetterList, OpsError> {
    let reader = Reader::new(kafka, topic)?;
    let filter = filter.clone();
    let topic = topic.to_owned();
    blocking(move || {
        let mut letters = Vec::new();
        let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
        let scanned = reader.scan(filter.partition, filter.since, |m| {
            let letter = summarize(m);
            if filter.matches(&letter) {
                let reason = letter.reason.clone().unwrap_or_else(|| "(none)".into());
                *by_reason.entry(reason).or_default() += 1;
                letters.push(letter);
            }
        })?;
        let matched = letters.len() as u64;
        Ok(DeadLetterList {
            topic,
            scanned,
            matched,
            letters: newest(letters, filter.limit),
            by_reason,
        })
    })
    .await
}

/// One dead letter: its headers, and its body when `with_body`.
pub async fn show(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    offset: i64,
    with_body: bool,
) -> Result<DeadLetterDetail, OpsError> {
    let reader = Reader::new(kafka, topic)?;
    let topic = topic.to_owned();
    blocking(move || {
        reader.one(partition, offset, |m| DeadLetterDetail {
            topic,
            summary: summarize(m),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers: m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| HeaderText {
                            key: h.key.to_owned(),
                            value: header_text(h.value),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            body_bytes: m.payload().map_or(0, <[u8]>::len),
            body: if with_body {
                m.payload().map(<[u8]>::to_vec)
            } else {
                None
            },
        })
    })
    .await
}

/// A dead letter as it goes back: the producer's key, headers and body.
struct Resend {
    letter: DeadLetterSummary,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Sends the dead letters of `topic` that match `filter` back to the partition they were read
/// from (`execute`; else only says what it would send): with the original key, body and
/// headers (the pipeline's dead-letter headers removed), plus [`REDRIVE_HEADER`], through an
/// idempotent producer with `acks=all`, in dead-letter order.
pub async fn redrive(
    kafka: &KafkaConfig,
    topic: &str,
    filter: &DeadLetterFilter,
    execute: bool,
) -> Result<RedriveReport, OpsError> {
    let reader = Reader::new(kafka, topic)?;
    let filter_owned = filter.clone();
    let dlq = topic.to_owned();
    let (resends, skipped) = blocking(move || {
        let mut selected = Vec::new();
        reader.scan(filter_owned.partition, filter_owned.since, |m| {
            let letter = summarize(m);
            if filter_owned.matches(&letter) {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .filter(|h| !ADDED_HEADERS.contains(&h.key))
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                selected.push(Resend {
                    letter,
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        })?;
        selected.sort_by_key(|r| (r.letter.time, r.letter.partition, r.letter.offset));
        if let Some(limit) = filter_owned.limit {
            let drop = selected.len().saturating_sub(limit);
            selected.drain(..drop);
        }
        // Each source must still exist, with the partition the message came from.
        let mut sources: HashMap<String, Result<Vec<i32>, String>> = HashMap::new();
        let mut resends = Vec::new();
        let mut skipped = Vec::new();
        for resend in selected {
            let why = match (&resend.letter.source_topic, resend.letter.source_partition) {
                (Some(source), Some(partition)) => {
                    let known =
                        sources.entry(source.clone()).or_insert_with(|| {
                            match partitions_of(
                                &reader.consumer,
                                source,
                                &reader.bootstrap,
                                &reader.reporter,
                            ) {
                                Ok(p) => Ok(p),
                                Err(e) => Err(e.to_string()),
                            }
                        });
                    match known {
                        Ok(partitions) if partitions.contains(&partition) => None,
                        Ok(partitions) => Some(format!(
                            "source topic `{source}` has no partition {partition} now (it has {})",
                            partitions.len()
                        )),
                        Err(e) => Some(format!("source topic: {e}")),
                    }
                }
                _ => Some(format!(
                    "not a dead letter of event-manager: no {SOURCE_TOPIC_HEADER} and \
                     {SOURCE_PARTITION_HEADER} headers"
                )),
            };
            match why {
                None => resends.push(resend),
                Some(why) => skipped.push(RedriveSkip {
                    letter: resend.letter,
                    why,
                }),
            }
        }
        Ok((resends, skipped))
    })
    .await?;

    let mut items: Vec<RedriveItem> = resends
        .iter()
        .map(|r| RedriveItem {
            letter: r.letter.clone(),
            produced_offset: None,
        })
        .collect();
    if execute && !resends.is_empty() {
        let reporter = ConnectionReporter::new(kafka);
        let producer = kafka::producer(kafka, Role::Redrive, &reporter)?;
        let sends = resends.iter().map(|r| {
            let origin = format!("{dlq}/{}/{}", r.letter.partition, r.letter.offset);
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
            for (key, value) in &r.headers {
                headers = headers.insert(Header {
                    key,
                    value: value.as_deref(),
                });
            }
            headers = headers.insert(Header {
                key: REDRIVE_HEADER,
                value: Some(origin.as_str()),
            });
            // Checked above: both are present.
            let source = r.letter.source_topic.as_deref().unwrap_or_default();
            let partition = r.letter.source_partition.unwrap_or_default();
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(source)
                .partition(partition)
                .headers(headers);
            if let Some(key) = r.key.as_deref() {
                record = record.key(key);
            }
            if let Some(payload) = r.payload.as_deref() {
                record = record.payload(payload);
            }
            producer.send(record, KAFKA_TIMEOUT)
        });
        let results = futures::future::join_all(sends).await;
        let mut first_error = None;
        for (item, result) in items.iter_mut().zip(results) {
            match result {
                Ok(delivery) => item.produced_offset = Some(delivery.offset),
                Err((e, _)) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(kafka_error(e, &kafka.bootstrap_servers, &reporter));
        }
    }
    Ok(RedriveReport {
        topic: topic.to_owned(),
        executed: execute,
        items,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(partition: i32, offset: i64, secs: i64, reason: &str) -> DeadLetterSummary {
        DeadLetterSummary {
            partition,
            offset,
            time: DateTime::from_timestamp(secs, 0),
            source_topic: Some("src".into()),
            source_partition: Some(0),
            source_offset: Some(offset),
            reason: Some(reason.into()),
            detail: None,
            format: Some("esoz".into()),
            redriven_from: None,
        }
    }

    #[test]
    fn a_filter_holds_when_every_condition_set_holds() {
        let l = letter(1, 7, 100, "missing_field");
        assert!(DeadLetterFilter::default().matches(&l));
        let since = |s| DateTime::from_timestamp(s, 0);
        assert!(DeadLetterFilter {
            since: since(100),
            reason: Some("missing_field".into()),
            source_topic: Some("src".into()),
            partition: Some(1),
            offset: Some(7),
            limit: None,
        }
        .matches(&l));
        for filter in [
            DeadLetterFilter {
                since: since(101),
                ..Default::default()
            },
            DeadLetterFilter {
                reason: Some("too_large".into()),
                ..Default::default()
            },
            DeadLetterFilter {
                source_topic: Some("other".into()),
                ..Default::default()
            },
            DeadLetterFilter {
                offset: Some(8),
                ..Default::default()
            },
        ] {
            assert!(!filter.matches(&l), "{filter:?}");
        }
    }

    #[test]
    fn a_limit_keeps_the_newest_oldest_first() {
        let letters = vec![
            letter(0, 2, 30, "a"),
            letter(1, 0, 10, "a"),
            letter(0, 1, 20, "a"),
        ];
        let kept = newest(letters.clone(), Some(2));
        assert_eq!(
            kept.iter().map(|l| l.offset).collect::<Vec<_>>(),
            [1, 2],
            "{kept:?}"
        );
        assert_eq!(newest(letters, None).len(), 3);
    }
}
