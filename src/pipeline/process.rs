//! The pure part of the pipeline for one message: properties from headers and metadata,
//! decode, select, and the rule's watch/capture lists. No I/O.

use message_selector::OwnedValue;

use super::rules::CompiledRule;
use crate::config::HeaderType;
use crate::formats::{DecodeError, DecodeErrorKind, DecodeNote, RawMessage};
use crate::model::{Observation, Properties};

/// A message copied out of the consumer, owned so that a batch can outlive the poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Option<Vec<u8>>,
    /// Headers in wire order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Timestamp in milliseconds, when the broker or producer set one.
    pub timestamp_ms: Option<i64>,
}

impl Message {
    /// The decoder's view of the message.
    pub fn raw(&self) -> RawMessage<'_> {
        RawMessage {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            payload: self.payload.as_deref(),
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    /// Selected; its observations (possibly none) go to change detection.
    Selected {
        /// Observations after the rule's watch/capture lists.
        observations: Vec<Observation>,
        /// Things worth counting.
        notes: Vec<DecodeNote>,
    },
    /// The selector did not accept it.
    NotSelected,
    /// It violates its format: dead letter.
    Invalid(DecodeError),
}

/// Builds the selector properties of a message: Kafka metadata as `JMS*` names, then headers
/// (aliased and typed per the rule). Body fields are added by the decoder.
///
/// | JMS name | Kafka |
/// |---|---|
/// | `JMSDestination` | topic (string) |
/// | `JMSTimestamp` | message timestamp in ms (long), NULL when absent |
/// | `JMSMessageID` | `ID:<topic>-<partition>-<offset>` (string) |
/// | `JMSCorrelationID` | message key as UTF-8 (string), NULL when absent |
/// | `JMSDeliveryMode` | `PERSISTENT` (Kafka persists every message) |
/// | `JMSPriority` | 4 (Kafka has no priorities; JMS default) |
/// | `JMSRedelivered` | false |
///
/// Kafka coordinates are also available as `kafka_topic`, `kafka_partition`, `kafka_offset`.
pub fn properties(rule: &CompiledRule, msg: &Message) -> Result<Properties, DecodeError> {
    let mut props = Properties::new();
    props.insert_str("JMSDestination", msg.topic.as_str());
    if let Some(ts) = msg.timestamp_ms {
        props.insert("JMSTimestamp", OwnedValue::Long(ts));
    }
    props.insert_str(
        "JMSMessageID",
        format!("ID:{}-{}-{}", msg.topic, msg.partition, msg.offset),
    );
    if let Some(key) = msg.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) {
        props.insert_str("JMSCorrelationID", key);
    }
    props.insert_str("JMSDeliveryMode", "PERSISTENT");
    props.insert("JMSPriority", OwnedValue::Long(4));
    props.insert("JMSRedelivered", OwnedValue::Boolean(false));
    props.insert_str("kafka_topic", msg.topic.as_str());
    props.insert(
        "kafka_partition",
        OwnedValue::Long(i64::from(msg.partition)),
    );
    props.insert("kafka_offset", OwnedValue::Long(msg.offset));

    for (wire_name, value) in &msg.headers {
        let name = rule
            .aliases
            .get(wire_name)
            .map(String::as_str)
            .unwrap_or(wire_name);
        if name.starts_with("JMS") {
            continue; // metadata names are not overridable by headers
        }
        let Some(bytes) = value else { continue };
        let Ok(text) = std::str::from_utf8(bytes) else {
            continue; // binary headers cannot be selector properties
        };
        let value = match rule
            .header_types
            .get(name)
            .copied()
            .unwrap_or(HeaderType::String)
        {
            HeaderType::String => OwnedValue::String(text.to_owned()),
            HeaderType::Long => OwnedValue::Long(
                text.trim()
                    .parse()
                    .map_err(|_| header_error(name, "an integer"))?,
            ),
            HeaderType::Double => OwnedValue::Double(
                text.trim()
                    .parse()
                    .map_err(|_| header_error(name, "a number"))?,
            ),
            HeaderType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" => OwnedValue::Boolean(true),
                "false" => OwnedValue::Boolean(false),
                _ => return Err(header_error(name, "`true` or `false`")),
            },
        };
        props.insert(name, value);
    }
    Ok(props)
}

fn header_error(name: &str, expected: &str) -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::InvalidField,
        format!("header `{name}` must be {expected}"),
    )
}

/// Decodes, selects and trims one message.
pub fn process(rule: &CompiledRule, msg: &Message) -> Processed {
    let mut props = match properties(rule, msg) {
        Ok(p) => p,
        Err(e) => return Processed::Invalid(e),
    };
    let decoded = match rule.decoder.decode(&msg.raw(), &mut props) {
        Ok(d) => d,
        Err(e) => return Processed::Invalid(e),
    };
    if !rule.selector.matches(&props) {
        return Processed::NotSelected;
    }
    let observations: Vec<Observation> = decoded
        .observations
        .into_iter()
        .filter_map(|mut o| {
            let mut captured = std::mem::take(&mut o.captured);
            o.attributes.retain(|name, value| {
                if rule.captures(name) {
                    captured.insert(name.clone(), value.take());
                    false
                } else {
                    rule.watches(name)
                }
            });
            o.captured = captured;
            (!o.attributes.is_empty()).then_some(o)
        })
        .collect();
    if observations.iter().any(has_nul) {
        // PostgreSQL text cannot hold NUL; storing would fail forever, so it is a dead letter.
        return Processed::Invalid(DecodeError::new(
            DecodeErrorKind::InvalidField,
            "a text field contains a NUL character",
        ));
    }
    Processed::Selected {
        observations,
        notes: decoded.notes,
    }
}

fn has_nul(o: &Observation) -> bool {
    let nul = |s: &str| s.contains('\0');
    nul(&o.event_type)
        || nul(&o.entity_type)
        || nul(&o.entity_id)
        || o.changed_by.as_deref().is_some_and(nul)
        || o.attributes
            .iter()
            .chain(o.captured.iter())
            .any(|(k, v)| nul(k) || v.as_deref().is_some_and(nul))
}
