//! The pure part of the pipeline for one message: properties from headers and metadata,
//! decode, select, and the rule's watch/capture lists. No I/O.

use message_selector::OwnedValue;

use super::rules::{CompiledRule, Metadata};
use super::topics::HeaderType;
use crate::formats::{DecodeError, DecodeErrorKind, DecodeNote, RawMessage, StatusLookup};
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
        /// A status the message announced without giving it: a FHIR look-up may learn it.
        lookup: Option<StatusLookup>,
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
    // Only the metadata the rule's selector refers to is materialised (the hot path).
    for name in rule.metadata() {
        let value = match name {
            Metadata::Destination => OwnedValue::String(msg.topic.clone()),
            Metadata::Timestamp => match msg.timestamp_ms {
                Some(ts) => OwnedValue::Long(ts),
                None => continue,
            },
            Metadata::MessageId => {
                OwnedValue::String(format!("ID:{}-{}-{}", msg.topic, msg.partition, msg.offset))
            }
            Metadata::CorrelationId => {
                match msg.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) {
                    Some(key) => OwnedValue::String(key.to_owned()),
                    None => continue,
                }
            }
            Metadata::DeliveryMode => OwnedValue::String("PERSISTENT".to_owned()),
            Metadata::Priority => OwnedValue::Long(4),
            Metadata::Redelivered => OwnedValue::Boolean(false),
            Metadata::KafkaTopic => OwnedValue::String(msg.topic.clone()),
            Metadata::KafkaPartition => OwnedValue::Long(i64::from(msg.partition)),
            Metadata::KafkaOffset => OwnedValue::Long(msg.offset),
        };
        props.insert(name.as_str(), value);
    }

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
    let (decoded, lookup) = match rule.decoder.decode_with_lookup(&msg.raw(), &mut props) {
        Ok(d) => d,
        Err(e) => return Processed::Invalid(e),
    };
    if !rule.selector.matches(&props) {
        return Processed::NotSelected;
    }
    let observations: Vec<Observation> = decoded
        .observations
        .into_iter()
        .filter_map(|o| trim(rule, o))
        .collect();
    if let Some(e) = observations.iter().find_map(unstorable) {
        return Processed::Invalid(e);
    }
    Processed::Selected {
        observations,
        notes: decoded.notes,
        lookup,
    }
}

/// Applies the rule's watch/capture lists to one observation; `None` when nothing it watches
/// is left. An observation the EventDB cannot store is an error (see [`unstorable`]): storing
/// would fail forever, so the message is a dead letter.
pub fn finish(rule: &CompiledRule, o: Observation) -> Result<Option<Observation>, DecodeError> {
    match trim(rule, o) {
        Some(o) => match unstorable(&o) {
            Some(e) => Err(e),
            None => Ok(Some(o)),
        },
        None => Ok(None),
    }
}

/// Longest event type, entity type and attribute name stored, in bytes. They are parts of
/// B-tree keys (`entity_state`, `event_counts`, `event_value_counts`, the type indexes of
/// `events`), and a key row may not exceed 2 704 bytes: a longer text would fail every insert
/// of its batch. The API accepts filter values of at most 256 characters anyway.
pub(crate) const MAX_NAME_BYTES: usize = 256;
/// Longest entity id stored, in bytes (part of the `entity_state` key, with the two above).
pub(crate) const MAX_ENTITY_ID_BYTES: usize = 1024;

/// Why the EventDB could not store this observation, if it could not: a NUL character
/// (PostgreSQL text cannot hold it), or a name or entity id longer than the keys allow.
fn unstorable(o: &Observation) -> Option<DecodeError> {
    if has_nul(o) {
        return Some(nul_error());
    }
    let too_long = |field: &str, len: usize, max: usize| {
        (len > max).then(|| {
            DecodeError::new(
                DecodeErrorKind::InvalidField,
                format!("{field} is {len} bytes long, more than the {max} allowed"),
            )
        })
    };
    too_long("event type", o.event_type.len(), MAX_NAME_BYTES)
        .or_else(|| too_long("entity type", o.entity_type.len(), MAX_NAME_BYTES))
        .or_else(|| too_long("entity id", o.entity_id.len(), MAX_ENTITY_ID_BYTES))
        .or_else(|| {
            o.attributes
                .keys()
                .chain(o.captured.keys())
                .find_map(|name| too_long("an attribute name", name.len(), MAX_NAME_BYTES))
        })
}

fn trim(rule: &CompiledRule, mut o: Observation) -> Option<Observation> {
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
}

fn nul_error() -> DecodeError {
    DecodeError::new(
        DecodeErrorKind::InvalidField,
        "a text field contains a NUL character",
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::topics::load_topic_rules;
    use crate::pipeline::RuleSet;

    fn rules(rule: &str) -> RuleSet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.toml"), rule).unwrap();
        RuleSet::compile(load_topic_rules(dir.path()).unwrap()).unwrap()
    }

    fn message(headers: &[(&str, &str)], payload: &str) -> Message {
        Message {
            topic: "event_manager_topic".into(),
            partition: 3,
            offset: 42,
            key: Some(b"k1".to_vec()),
            payload: Some(payload.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
                .collect(),
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    const ESOZ: &str = r#"{"event_type":"StatusChangeEvent","entity_type":"EmployeeRequest","entity_id":"r1","properties":{"status":{"new_value":"APPROVED"},"employee_id":{"new_value":"e1"},"other":{"new_value":"x"}},"event_time":"2024-01-01T00:00:00Z"}"#;

    #[test]
    fn metadata_headers_aliases_and_typing() {
        let set = rules(
            "[[topic]]\nname = \"event_manager_topic\"\nformat = \"esoz\"\ndead_letter_topic = \"d\"\nselector = \"JMSTimestamp > 0 AND JMSMessageID LIKE 'ID:%-3-42' AND JMSCorrelationID = 'k1' AND kafka_partition = 3 AND version = 7 AND resourceElement = 'x'\"\n[topic.headers]\nversion = \"long\"\n[topic.aliases]\nresourceelement = \"resourceElement\"\n",
        );
        let rule = set.get(0).unwrap();
        let msg = message(&[("version", "7"), ("resourceelement", "x")], ESOZ);
        let props = properties(rule, &msg).unwrap();
        assert_eq!(props.get_owned("version"), Some(&OwnedValue::Long(7)));
        assert_eq!(props.get_str("resourceElement"), Some("x"));
        assert_eq!(
            props.get_str("JMSDestination"),
            None,
            "not referenced, not built"
        );
        assert!(matches!(process(rule, &msg), Processed::Selected { .. }));

        let bad = message(&[("version", "seven")], ESOZ);
        match process(rule, &bad) {
            Processed::Invalid(e) => {
                assert!(e.detail.contains("`version` must be an integer"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let other = message(&[("version", "8"), ("resourceelement", "x")], ESOZ);
        assert_eq!(process(rule, &other), Processed::NotSelected);
    }

    #[test]
    fn watch_and_capture_lists_trim_observations() {
        let set = rules(
            "[[topic]]\nname = \"event_manager_topic\"\nformat = \"esoz\"\ndead_letter_topic = \"d\"\nwatch = [\"status\"]\ncapture = [\"employee_id\"]\n",
        );
        let Processed::Selected { observations, .. } =
            process(set.get(0).unwrap(), &message(&[], ESOZ))
        else {
            panic!("selected");
        };
        let o = &observations[0];
        assert_eq!(o.attributes.keys().collect::<Vec<_>>(), ["status"]);
        assert_eq!(o.captured["employee_id"].as_deref(), Some("e1"));
    }

    #[test]
    fn nul_characters_are_dead_letters() {
        let set = rules(
            "[[topic]]\nname = \"event_manager_topic\"\nformat = \"esoz\"\ndead_letter_topic = \"d\"\n",
        );
        let payload = ESOZ.replace("\"r1\"", "\"r\\u00001\"");
        assert!(matches!(
            process(set.get(0).unwrap(), &message(&[], &payload)),
            Processed::Invalid(_)
        ));
    }

    #[test]
    fn names_and_ids_longer_than_the_keys_allow_are_dead_letters() {
        let set = rules(
            "[[topic]]\nname = \"event_manager_topic\"\nformat = \"esoz\"\ndead_letter_topic = \"d\"\n",
        );
        let rule = set.get(0).unwrap();
        let stored = |payload: &str| match process(rule, &message(&[], payload)) {
            Processed::Selected { .. } => Ok(()),
            Processed::Invalid(e) => Err(e.detail),
            Processed::NotSelected => panic!("selected"),
        };
        assert_eq!(stored(ESOZ), Ok(()));
        // At the limits they are stored.
        let name = "s".repeat(MAX_NAME_BYTES);
        assert_eq!(
            stored(&ESOZ.replace("\"status\"", &format!("\"{name}\""))),
            Ok(())
        );
        let id = "r".repeat(MAX_ENTITY_ID_BYTES);
        assert_eq!(
            stored(&ESOZ.replace("\"r1\"", &format!("\"{id}\""))),
            Ok(())
        );
        // One byte more is a dead letter naming the field, without its content.
        let name = "é".repeat(MAX_NAME_BYTES / 2) + "s";
        assert_eq!(
            stored(&ESOZ.replace("\"status\"", &format!("\"{name}\""))),
            Err("an attribute name is 257 bytes long, more than the 256 allowed".into())
        );
        let id = "r".repeat(MAX_ENTITY_ID_BYTES + 1);
        assert_eq!(
            stored(&ESOZ.replace("\"r1\"", &format!("\"{id}\""))),
            Err("entity id is 1025 bytes long, more than the 1024 allowed".into())
        );
        let entity_type = "T".repeat(MAX_NAME_BYTES + 1);
        let payload = ESOZ.replacen("EmployeeRequest", &entity_type, 1);
        assert!(payload != ESOZ, "the fixture names its entity type");
        assert_eq!(
            stored(&payload),
            Err("entity type is 257 bytes long, more than the 256 allowed".into())
        );
    }
}
