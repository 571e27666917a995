//! ESOZ (Ukrainian eHealth) StatusChangeEvent, as in seed 003:
//! `{id?, event_type, entity_type, entity_id, properties: {X: {new_value}}, event_time, changed_by}`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{payload, DecodeError, DecodeErrorKind, Decoded, Decoder, Format, RawMessage};
use crate::formats::FormatConfigError;
use crate::model::{Observation, ObservationKind, Properties};

/// Decoder for the `esoz` format.
#[derive(Debug, Clone, Default)]
pub struct EsozDecoder {
    _private: (),
}

impl EsozDecoder {
    /// Builds the decoder from a topic rule's `[options]` (the format has none yet).
    pub fn from_options(options: &toml::Table) -> Result<Self, FormatConfigError> {
        if let Some(key) = options.keys().next() {
            return Err(FormatConfigError(format!(
                "unknown option `{key}` for format `esoz`"
            )));
        }
        Ok(Self::default())
    }
}

/// A StatusChangeEvent after decoding from any wire encoding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EsozEvent {
    pub(crate) event_type: String,
    pub(crate) entity_type: String,
    pub(crate) entity_id: String,
    pub(crate) properties: BTreeMap<String, Option<String>>,
    pub(crate) event_time: DateTime<Utc>,
    pub(crate) changed_by: Option<String>,
}

impl EsozEvent {
    pub(crate) fn into_decoded(self, props: &mut Properties) -> Decoded {
        props.insert_if_absent(
            "event_type",
            message_selector::OwnedValue::String(self.event_type.clone()),
        );
        props.insert_if_absent(
            "entity_type",
            message_selector::OwnedValue::String(self.entity_type.clone()),
        );
        Decoded {
            observations: vec![Observation {
                event_type: self.event_type,
                entity_type: self.entity_type,
                entity_id: self.entity_id,
                // The producer emits the current status, including for objects it just created;
                // only a difference from the last known value is a change (seed 003: "not new").
                kind: ObservationKind::Snapshot,
                attributes: self.properties,
                captured: BTreeMap::new(),
                event_time: self.event_time,
                changed_by: self.changed_by,
                version: None,
            }],
            notes: Vec::new(),
        }
    }
}

impl Decoder for EsozDecoder {
    fn format(&self) -> Format {
        Format::Esoz
    }

    fn decode(&self, msg: &RawMessage<'_>, props: &mut Properties) -> Result<Decoded, DecodeError> {
        let bytes = payload(msg)?;
        let event = decode_json(bytes)?;
        Ok(event.into_decoded(props))
    }
}

fn decode_json(bytes: &[u8]) -> Result<EsozEvent, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let wire: WireEvent<'_> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            DecodeError::new(
                DecodeErrorKind::InvalidField,
                format!("field `{path}` has the wrong type"),
            )
        } else {
            DecodeError::new(
                DecodeErrorKind::InvalidEncoding,
                format!(
                    "value is not valid JSON (line {}, column {})",
                    inner.line(),
                    inner.column()
                ),
            )
        }
    })?;
    de.end().map_err(|_| {
        DecodeError::new(
            DecodeErrorKind::InvalidEncoding,
            "trailing data after the JSON value",
        )
    })?;
    wire.normalise()
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow, default)]
    event_type: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    entity_type: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    entity_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    properties: Option<BTreeMap<Cow<'a, str>, WireProperty<'a>>>,
    #[serde(borrow, default)]
    event_time: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    changed_by: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct WireProperty<'a> {
    #[serde(borrow, default)]
    new_value: Option<Scalar<'a>>,
}

impl WireEvent<'_> {
    fn normalise(self) -> Result<EsozEvent, DecodeError> {
        let event_type = required_text("event_type", self.event_type)?;
        let entity_type = required_text("entity_type", self.entity_type)?;
        let entity_id = required_text("entity_id", self.entity_id)?;
        let event_time = match self.event_time {
            None | Some(Scalar::Null) => return Err(DecodeError::missing("event_time")),
            Some(Scalar::Str(s)) => parse_event_time(&s)
                .ok_or_else(|| DecodeError::invalid("event_time", "an ISO 8601 date-time"))?,
            Some(_) => {
                return Err(DecodeError::invalid(
                    "event_time",
                    "an ISO 8601 date-time string",
                ))
            }
        };
        let changed_by = match self.changed_by {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Str(s)) if s.is_empty() => None,
            Some(Scalar::Str(s)) => Some(s.into_owned()),
            Some(_) => return Err(DecodeError::invalid("changed_by", "a string")),
        };
        let wire_props = self
            .properties
            .ok_or_else(|| DecodeError::missing("properties"))?;
        if wire_props.is_empty() {
            return Err(DecodeError::invalid("properties", "a non-empty object"));
        }
        let mut properties = BTreeMap::new();
        for (name, prop) in wire_props {
            let value = match prop.new_value {
                None => {
                    return Err(DecodeError::missing(&format!(
                        "properties.{name}.new_value"
                    )))
                }
                Some(v) => v.into_text().map_err(|()| {
                    DecodeError::invalid(
                        &format!("properties.{name}.new_value"),
                        "a string, number, boolean or null",
                    )
                })?,
            };
            properties.insert(name.into_owned(), value);
        }
        Ok(EsozEvent {
            event_type,
            entity_type,
            entity_id,
            properties,
            event_time,
            changed_by,
        })
    }
}

fn required_text(field: &str, value: Option<Scalar<'_>>) -> Result<String, DecodeError> {
    match value {
        None | Some(Scalar::Null) => Err(DecodeError::missing(field)),
        Some(Scalar::Str(s)) if s.trim().is_empty() => {
            Err(DecodeError::invalid(field, "a non-empty string"))
        }
        Some(Scalar::Str(s)) => Ok(s.into_owned()),
        Some(_) => Err(DecodeError::invalid(field, "a string")),
    }
}

/// Parses RFC 3339, or a zone-less ISO 8601 date-time meaning UTC (Elixir `NaiveDateTime`).
pub(crate) fn parse_event_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .map(|n| n.and_utc())
}

/// A JSON value of which only scalars are kept; containers are skipped without allocation.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Bool(bool),
    Number(String),
    Null,
    Container,
}

impl Scalar<'_> {
    /// Attribute values are stored as text: booleans as `true`/`false`, numbers as written.
    fn into_text(self) -> Result<Option<String>, ()> {
        match self {
            Scalar::Str(s) => Ok(Some(s.into_owned())),
            Scalar::Bool(b) => Ok(Some(b.to_string())),
            Scalar::Number(n) => Ok(Some(n)),
            Scalar::Null => Ok(None),
            Scalar::Container => Err(()),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Number(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Number(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Number(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Scalar::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Container)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Container)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<Decoded, DecodeError> {
        let msg = RawMessage {
            topic: "event_manager_topic",
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(json.as_bytes()),
            timestamp_ms: None,
        };
        EsozDecoder::default().decode(&msg, &mut Properties::new())
    }

    #[test]
    fn decodes_the_seed_example() {
        let d = decode(r#"{ "id": "df9f70ee-4b12-4740-b0f5-bb5aea116863", "event_type": "StatusChangeEvent", "entity_type": "EmployeeRequest", "entity_id": "df9f70ee-4b12-4740-b0f5-bb5aea116863", "properties": { "status": { "new_value": "APPROVED" }, "employee_id": { "new_value": "e1453f4c-1077-4e85-8c98-c13ffca0063e" } }, "event_time": "2017-04-20T19:14:13Z", "changed_by": "df9f70ee-4b12-4740-b0f5-bb5aea116863" }"#).unwrap();
        let o = &d.observations[0];
        assert_eq!(o.event_type, "StatusChangeEvent");
        assert_eq!(o.entity_type, "EmployeeRequest");
        assert_eq!(o.attributes["status"].as_deref(), Some("APPROVED"));
        assert_eq!(
            o.attributes["employee_id"].as_deref(),
            Some("e1453f4c-1077-4e85-8c98-c13ffca0063e")
        );
        assert_eq!(o.event_time.to_rfc3339(), "2017-04-20T19:14:13+00:00");
        assert_eq!(o.kind, ObservationKind::Snapshot);
    }

    #[test]
    fn booleans_and_naive_times() {
        let d = decode(r#"{"event_type":"StateChangeEvent","entity_type":"LegalEntity","entity_id":"x","properties":{"is_suspended":{"new_value":true}},"event_time":"2020-01-02T03:04:05.123456","changed_by":null}"#).unwrap();
        let o = &d.observations[0];
        assert_eq!(o.attributes["is_suspended"].as_deref(), Some("true"));
        assert_eq!(o.changed_by, None);
        assert_eq!(o.event_time.timestamp_subsec_micros(), 123456);
    }

    #[test]
    fn precise_reasons() {
        let cases = [
            ("", "empty_payload"),
            ("{", "invalid_encoding"),
            ("{} x", "invalid_encoding"),
            (
                r#"{"entity_type":"A","entity_id":"1","properties":{"status":{"new_value":"A"}},"event_time":"2020-01-01T00:00:00Z"}"#,
                "`event_type` is missing",
            ),
            (
                r#"{"event_type":"S","entity_type":5,"entity_id":"1","properties":{"status":{"new_value":"A"}},"event_time":"2020-01-01T00:00:00Z"}"#,
                "`entity_type` must be a string",
            ),
            (
                r#"{"event_type":"S","entity_type":"A","entity_id":"1","properties":[],"event_time":"2020-01-01T00:00:00Z"}"#,
                "`properties` has the wrong type",
            ),
            (
                r#"{"event_type":"S","entity_type":"A","entity_id":"1","properties":{},"event_time":"2020-01-01T00:00:00Z"}"#,
                "non-empty object",
            ),
            (
                r#"{"event_type":"S","entity_type":"A","entity_id":"1","properties":{"status":{}},"event_time":"2020-01-01T00:00:00Z"}"#,
                "`properties.status.new_value` is missing",
            ),
            (
                r#"{"event_type":"S","entity_type":"A","entity_id":"1","properties":{"status":{"new_value":{"a":1}}},"event_time":"2020-01-01T00:00:00Z"}"#,
                "`properties.status.new_value` must be",
            ),
            (
                r#"{"event_type":"S","entity_type":"A","entity_id":"1","properties":{"status":{"new_value":"A"}},"event_time":"yesterday"}"#,
                "`event_time` must be an ISO 8601",
            ),
            (
                r#"{"event_type":"S","entity_type":"A","entity_id":"1","properties":{"status":{"new_value":"A"}}}"#,
                "`event_time` is missing",
            ),
        ];
        for (input, expected) in cases {
            let err = decode(input).expect_err(input);
            assert!(err.to_string().contains(expected), "{input}: {err}");
        }
    }
}
