//! Dead letters: undecodable messages are produced, unchanged, to the rule's dead-letter topic
//! with headers naming the reason and the source coordinates, before their offset is committed.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::internal_events::{DeadLetterSent, Instruments};
use super::process::Message;
use crate::formats::DecodeError;

/// Header carrying the reason code (e.g. `missing_field`).
pub(crate) const REASON_HEADER: &str = "em-dlq-reason";
/// Header carrying the human-readable detail.
pub(crate) const DETAIL_HEADER: &str = "em-dlq-detail";
/// Header carrying the source topic.
pub(crate) const SOURCE_TOPIC_HEADER: &str = "em-dlq-source-topic";
/// Header carrying the source partition.
pub(crate) const SOURCE_PARTITION_HEADER: &str = "em-dlq-source-partition";
/// Header carrying the source offset.
pub(crate) const SOURCE_OFFSET_HEADER: &str = "em-dlq-source-offset";
/// Header carrying the source format.
pub(crate) const FORMAT_HEADER: &str = "em-dlq-format";

/// A message on its way to a dead-letter topic.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    /// Target topic.
    pub topic: String,
    /// The original message.
    pub message: Message,
    /// Why it is a dead letter.
    pub error: DecodeError,
    /// The rule's format name.
    pub format: &'static str,
}

/// Produces dead letters and waits for the broker's acknowledgement.
pub(crate) async fn deliver<C: rdkafka::ClientContext + 'static>(
    producer: &FutureProducer<C>,
    letter: &DeadLetter,
    timeout: Duration,
) -> Result<(), rdkafka::error::KafkaError> {
    let partition = letter.message.partition.to_string();
    let offset = letter.message.offset.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(letter.message.headers.len() + 6);
    for (k, v) in &letter.message.headers {
        headers = headers.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    headers = headers
        .insert(Header {
            key: REASON_HEADER,
            value: Some(letter.error.kind.as_str()),
        })
        .insert(Header {
            key: DETAIL_HEADER,
            value: Some(letter.error.detail.as_str()),
        })
        .insert(Header {
            key: SOURCE_TOPIC_HEADER,
            value: Some(letter.message.topic.as_str()),
        })
        .insert(Header {
            key: SOURCE_PARTITION_HEADER,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: SOURCE_OFFSET_HEADER,
            value: Some(offset.as_str()),
        })
        .insert(Header {
            key: FORMAT_HEADER,
            value: Some(letter.format),
        });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&letter.topic).headers(headers);
    if let Some(key) = letter.message.key.as_deref() {
        record = record.key(key);
    }
    if let Some(payload) = letter.message.payload.as_deref() {
        record = record.payload(payload);
    }
    producer
        .send(record, timeout)
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// Produces every letter; the delivered ones are counted and removed, so that a retry sends
/// only the rest. The first failure is returned.
pub(super) async fn deliver_all<C: rdkafka::ClientContext + 'static>(
    producer: &FutureProducer<C>,
    letters: &mut Vec<DeadLetter>,
    instruments: &Instruments,
) -> Result<(), rdkafka::error::KafkaError> {
    if letters.is_empty() {
        return Ok(());
    }
    let results = futures::future::join_all(
        letters
            .iter()
            .map(|l| deliver(producer, l, Duration::from_secs(30))),
    )
    .await;
    let mut first_error = None;
    let mut kept = Vec::new();
    for (letter, result) in letters.drain(..).zip(results) {
        match result {
            Ok(()) => instruments.emit(DeadLetterSent {
                source_topic: &letter.message.topic,
            }),
            Err(e) => {
                first_error.get_or_insert(e);
                kept.push(letter);
            }
        }
    }
    *letters = kept;
    first_error.map_or(Ok(()), Err)
}
