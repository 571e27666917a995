//! ESOZ (Ukrainian eHealth) StatusChangeEvent (docs/architecture.md, "ESOZ Event Manager"):
//! `{id?, event_type, entity_type, entity_id, properties: {X: {new_value}}, event_time, changed_by}`.
//!
//! Two wire encodings give the same observation: JSON as documented, and the Erlang External
//! Term Format the Elixir producers really send (`:erlang.term_to_binary(event)`, first byte
//! 131): a map with atom keys, string-keyed `properties` of `%{new_value: v}` maps, `nil`/`true`/
//! `false` atoms, and `event_time` as a `NaiveDateTime` struct meaning UTC (or an ISO string).

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;

use super::etf::{self, Term};
use super::wire::{is_blank, parse_typed, Scalar};
use super::{payload, DecodeError, DecodeErrorKind, Decoded, Decoder, Format, RawMessage};
use crate::formats::FormatConfigError;
use crate::model::{Attributes, Observation, ObservationKind, Properties, Scope};
use crate::time::parse_event_time;

/// Decoder for the `esoz` format.
#[derive(Debug, Clone, Default)]
pub struct EsozDecoder {
    _private: (),
}

impl EsozDecoder {
    /// Builds the decoder from a topic rule's `[options]` (the format has none yet).
    pub(crate) fn from_options(options: &toml::Table) -> Result<Self, FormatConfigError> {
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
    pub(crate) properties: Attributes,
    pub(crate) event_time: DateTime<Utc>,
    pub(crate) changed_by: Option<String>,
}

impl EsozEvent {
    pub(crate) fn into_decoded(self, props: &mut Properties) -> Decoded {
        use message_selector::OwnedValue;
        // The usual event type is a constant: the observation borrows it, the property takes
        // the text.
        const STATUS_CHANGE_EVENT: &str = "StatusChangeEvent";
        let event_type = match self.event_type.as_str() {
            STATUS_CHANGE_EVENT => Cow::Borrowed(STATUS_CHANGE_EVENT),
            _ => Cow::Owned(self.event_type.clone()),
        };
        props.insert_if_absent("event_type", OwnedValue::String(self.event_type));
        props.insert_if_absent_with("entity_type", || {
            OwnedValue::String(self.entity_type.clone())
        });
        Decoded {
            observations: vec![Observation {
                event_type,
                entity_type: Cow::Owned(self.entity_type),
                entity_id: self.entity_id,
                // The message states the entity's status now. ESOZ publishes only changes, so
                // the rule's default `first_seen = "event"` makes a first status an event with
                // `old_value: null`; later messages are compared with the known value.
                kind: ObservationKind::Snapshot,
                attributes: self.properties,
                captured: BTreeMap::new(),
                event_time: self.event_time,
                changed_by: self.changed_by,
                version: None,
                scope: Scope::Unscoped,
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
        let event = if bytes.first() == Some(&etf::VERSION) {
            decode_etf(bytes)?
        } else {
            decode_json(bytes)?
        };
        Ok(event.into_decoded(props))
    }
}

fn decode_json(bytes: &[u8]) -> Result<EsozEvent, DecodeError> {
    parse_typed::<WireEvent<'_>>(bytes)?.normalise()
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireEvent<'a> {
    event_type: Option<Scalar<'a>>,
    entity_type: Option<Scalar<'a>>,
    entity_id: Option<Scalar<'a>>,
    properties: Option<BTreeMap<Cow<'a, str>, WireProperty<'a>>>,
    event_time: Option<Scalar<'a>>,
    changed_by: Option<Scalar<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireProperty<'a> {
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
        let mut properties = Attributes::new();
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

fn decode_etf(bytes: &[u8]) -> Result<EsozEvent, DecodeError> {
    match read_etf_event(bytes) {
        Some(event) => Ok(event),
        None => decode_etf_term(bytes),
    }
}

/// The fast path for the usual StatusChangeEvent, read straight from the bytes in one pass: no
/// term tree, no separate validation. It reads only what it can map without doubt: atom keys
/// each given once, binary (UTF-8) texts, properties of `%{new_value: v}` maps with distinct
/// names, and an ISO binary or a `NaiveDateTime`/`DateTime` struct of integers. Anything else,
/// errors included, gives `None`, and [`decode_etf_term`] decides with its precise reasons; for
/// every value read here it gives the same event (the tests compare the two).
fn read_etf_event(bytes: &[u8]) -> Option<EsozEvent> {
    use etf::Token;
    /// A key given again: the general path knows which one counts.
    fn once<T>(slot: &Option<T>) -> Option<()> {
        slot.is_none().then_some(())
    }
    fn text(token: Token<'_>) -> Option<&str> {
        match token {
            Token::Binary(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
    let required = |token: Token<'_>| text(token).filter(|t| !is_blank(t)).map(str::to_owned);
    let mut r = etf::Reader::new(bytes)?;
    let Token::Map(n) = r.token(0)? else {
        return None;
    };
    let (mut event_type, mut entity_type, mut entity_id) = (None, None, None);
    let (mut properties, mut event_time, mut changed_by) = (None, None, None);
    for _ in 0..n {
        let Token::Atom(key) = r.token(1)? else {
            return None;
        };
        match key {
            b"event_type" => {
                once(&event_type)?;
                event_type = Some(required(r.token(1)?)?);
            }
            b"entity_type" => {
                once(&entity_type)?;
                entity_type = Some(required(r.token(1)?)?);
            }
            b"entity_id" => {
                once(&entity_id)?;
                entity_id = Some(required(r.token(1)?)?);
            }
            b"properties" => {
                once(&properties)?;
                properties = Some(read_etf_properties(&mut r)?);
            }
            b"event_time" => {
                once(&event_time)?;
                event_time = Some(read_etf_time(&mut r)?);
            }
            b"changed_by" => {
                once(&changed_by)?;
                changed_by = Some(match r.token(1)? {
                    Token::Atom(b"nil") => None,
                    other => Some(text(other)?)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                });
            }
            _ => r.skip(1)?,
        }
    }
    if !r.at_end() {
        return None;
    }
    Some(EsozEvent {
        event_type: event_type?,
        entity_type: entity_type?,
        entity_id: entity_id?,
        properties: properties?,
        event_time: event_time?,
        changed_by: changed_by.flatten(),
    })
}

/// `properties` for [`read_etf_event`]: `%{name => %{new_value: v}}`, names distinct.
fn read_etf_properties(r: &mut etf::Reader<'_>) -> Option<Attributes> {
    use etf::Token;
    let Token::Map(n) = r.token(1)? else {
        return None;
    };
    if n == 0 {
        return None;
    }
    let mut properties = Attributes::new();
    for _ in 0..n {
        let name = match r.token(2)? {
            Token::Binary(b) | Token::Atom(b) => std::str::from_utf8(b).ok()?,
            _ => return None,
        };
        let Token::Map(m) = r.token(2)? else {
            return None;
        };
        let mut new_value = None;
        for _ in 0..m {
            match r.token(3)? {
                Token::Atom(b"new_value") if new_value.is_none() => {
                    new_value = Some(match r.token(3)? {
                        Token::Atom(b"nil") => None,
                        Token::Atom(b) | Token::Binary(b) => {
                            Some(std::str::from_utf8(b).ok()?.to_owned())
                        }
                        Token::Integer(i) => Some(i.to_string()),
                        _ => return None,
                    });
                }
                Token::Atom(other) if other != b"new_value" => r.skip(3)?,
                _ => return None,
            }
        }
        if properties.insert(name.to_owned(), new_value?).is_some() {
            return None;
        }
    }
    Some(properties)
}

/// `event_time` for [`read_etf_event`]: an ISO 8601 binary or a struct of integer fields.
fn read_etf_time(r: &mut etf::Reader<'_>) -> Option<DateTime<Utc>> {
    use etf::Token;
    let n = match r.token(1)? {
        Token::Binary(b) => return parse_event_time(std::str::from_utf8(b).ok()?),
        Token::Map(n) => n,
        _ => return None,
    };
    let mut parts = TimeParts::default();
    let (mut struct_name, mut micros) = (None, None);
    for _ in 0..n {
        let Token::Atom(key) = r.token(2)? else {
            return None;
        };
        let slot = match key {
            b"__struct__" if struct_name.is_none() => {
                struct_name = Some(match r.token(2)? {
                    Token::Atom(b"Elixir.NaiveDateTime") => false,
                    Token::Atom(b"Elixir.DateTime") => true,
                    _ => return None,
                });
                continue;
            }
            b"microsecond" if micros.is_none() => {
                // `{value, precision}`: only the value counts.
                let Token::Tuple(k @ 1..) = r.token(2)? else {
                    return None;
                };
                let Token::Integer(value) = r.token(3)? else {
                    return None;
                };
                micros = Some(u32::try_from(value).ok()?);
                (1..k).try_for_each(|_| r.skip(3))?;
                continue;
            }
            b"year" => &mut parts.year,
            b"month" => &mut parts.month,
            b"day" => &mut parts.day,
            b"hour" => &mut parts.hour,
            b"minute" => &mut parts.minute,
            b"second" => &mut parts.second,
            b"utc_offset" => &mut parts.utc_offset,
            b"std_offset" => &mut parts.std_offset,
            b"__struct__" | b"microsecond" => return None,
            _ => {
                r.skip(2)?;
                continue;
            }
        };
        let Token::Integer(value) = r.token(2)? else {
            return None;
        };
        if slot.replace(i64::from(value)).is_some() {
            return None;
        }
    }
    parts.is_utc_datetime = struct_name?;
    parts.micros = micros.unwrap_or(0);
    parts.to_utc()
}

/// The general path: the whole term decoded (by the direct reader or `eetf`), then mapped.
fn decode_etf_term(bytes: &[u8]) -> Result<EsozEvent, DecodeError> {
    let Term::Map(map) = etf::decode(bytes)? else {
        return Err(DecodeError::new(
            DecodeErrorKind::UnsupportedType,
            "ETF value must be a map (a StatusChangeEvent), not another term",
        ));
    };
    let (mut event_type, mut entity_type, mut entity_id) = (None, None, None);
    let (mut properties, mut event_time, mut changed_by) = (None, None, None);
    for (key, value) in map {
        // A binary key must be UTF-8 (eetf's atoms always are).
        let Some(name) = key
            .as_key()
            .filter(|k| matches!(key, Term::Atom(_)) || std::str::from_utf8(k).is_ok())
        else {
            return Err(DecodeError::invalid(
                "<key>",
                "an atom or string key of the event map",
            ));
        };
        match name {
            b"event_type" => event_type = Some(value),
            b"entity_type" => entity_type = Some(value),
            b"entity_id" => entity_id = Some(value),
            b"properties" => properties = Some(value),
            b"event_time" => event_time = Some(value),
            b"changed_by" => changed_by = Some(value),
            // `id`, `__struct__` and future keys do not change the observation.
            _ => {}
        }
    }
    let event_type = required_term_text("event_type", event_type)?;
    let entity_type = required_term_text("entity_type", entity_type)?;
    let entity_id = required_term_text("entity_id", entity_id)?;
    let event_time = match event_time {
        None => return Err(DecodeError::missing("event_time")),
        Some(t) if t.is_nil() => return Err(DecodeError::missing("event_time")),
        Some(t) => term_time(t)?,
    };
    let changed_by = match changed_by {
        None => None,
        Some(t) => term_text(t)
            .map_err(|()| DecodeError::invalid("changed_by", "a string or nil"))?
            .filter(|s| !s.is_empty()),
    };
    let Some(Term::Map(wire_props)) = properties else {
        return Err(match properties {
            None => DecodeError::missing("properties"),
            Some(_) => DecodeError::invalid("properties", "a map"),
        });
    };
    if wire_props.is_empty() {
        return Err(DecodeError::invalid("properties", "a non-empty map"));
    }
    let mut properties = Attributes::new();
    for (key, value) in wire_props {
        let name =
            match key {
                Term::Binary(b) => utf8(b)
                    .map_err(|()| DecodeError::invalid("properties.<key>", "a UTF-8 string"))?,
                Term::Atom(a) => utf8(a)
                    .map_err(|()| DecodeError::invalid("properties.<key>", "a UTF-8 string"))?,
                _ => return Err(DecodeError::invalid("properties.<key>", "a string")),
            };
        // Only an error names the property, and only when it looks like a field name.
        let field = |suffix: &str| {
            let shown = if super::wire::is_field_name(&name) {
                name.as_str()
            } else {
                "<key>"
            };
            format!("properties.{shown}{suffix}")
        };
        let Term::Map(inner) = value else {
            return Err(DecodeError::invalid(&field(""), "a map with key new_value"));
        };
        let new_value = inner
            .into_iter()
            .find(|(k, _)| k.as_key() == Some(b"new_value"))
            .map(|(_, v)| v)
            .ok_or_else(|| DecodeError::missing(&field(".new_value")))?;
        let text = term_text(new_value).map_err(|()| {
            DecodeError::invalid(&field(".new_value"), "a string, number, boolean or nil")
        })?;
        properties.insert(name, text);
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

/// Bytes as an owned UTF-8 string.
fn utf8(bytes: Cow<'_, [u8]>) -> Result<String, ()> {
    match bytes {
        Cow::Borrowed(b) => std::str::from_utf8(b).map(str::to_owned).map_err(|_| ()),
        Cow::Owned(b) => String::from_utf8(b).map_err(|_| ()),
    }
}

/// A scalar term as stored text: binaries and charlists as UTF-8, `nil` as NULL, other atoms
/// (`true`, `false`, enum-like atoms) by name, numbers in decimal.
fn term_text(term: Term<'_>) -> Result<Option<String>, ()> {
    match term {
        Term::Atom(a) if *a == *b"nil" => Ok(None),
        Term::Atom(b) | Term::Binary(b) | Term::ByteList(b) => utf8(b).map(Some),
        Term::Integer(i) => Ok(Some(i.to_string())),
        Term::OtherNumber(n) => Ok(Some(n)),
        _ => Err(()),
    }
}

fn required_term_text(field: &str, term: Option<Term<'_>>) -> Result<String, DecodeError> {
    // As in JSON, identifiers are text: numbers and booleans are not accepted.
    let text = match term {
        None => return Err(DecodeError::missing(field)),
        Some(Term::Atom(a)) if *a == *b"nil" => return Err(DecodeError::missing(field)),
        Some(Term::Atom(a)) if *a != *b"true" && *a != *b"false" => utf8(a),
        Some(Term::Binary(b) | Term::ByteList(b)) => utf8(b),
        Some(_) => Err(()),
    }
    .map_err(|()| DecodeError::invalid(field, "a string"))?;
    if is_blank(&text) {
        return Err(DecodeError::invalid(field, "a non-empty string"));
    }
    Ok(text)
}

/// `event_time`: an Elixir `NaiveDateTime` (UTC) or `DateTime` struct, or an ISO 8601 binary.
fn term_time(term: Term<'_>) -> Result<DateTime<Utc>, DecodeError> {
    let bad = || {
        DecodeError::invalid(
            "event_time",
            "a NaiveDateTime/DateTime struct or an ISO 8601 string",
        )
    };
    let map = match term {
        Term::Binary(b) => {
            let text = std::str::from_utf8(&b).map_err(|_| bad())?;
            return parse_event_time(text).ok_or_else(bad);
        }
        Term::Map(map) => map,
        _ => return Err(bad()),
    };
    // The struct's fields by name; of two keys with one name (atom and string) the later counts.
    let mut fields = TimeFields::default();
    for (k, v) in &map {
        let slot = match k.as_key() {
            Some(b"__struct__") => &mut fields.struct_name,
            Some(b"year") => &mut fields.year,
            Some(b"month") => &mut fields.month,
            Some(b"day") => &mut fields.day,
            Some(b"hour") => &mut fields.hour,
            Some(b"minute") => &mut fields.minute,
            Some(b"second") => &mut fields.second,
            Some(b"microsecond") => &mut fields.microsecond,
            Some(b"utc_offset") => &mut fields.utc_offset,
            Some(b"std_offset") => &mut fields.std_offset,
            _ => continue,
        };
        *slot = Some(v);
    }
    let is_utc_datetime = match fields.struct_name {
        Some(Term::Atom(a)) if **a == *b"Elixir.NaiveDateTime" => false,
        Some(Term::Atom(a)) if **a == *b"Elixir.DateTime" => true,
        _ => return Err(bad()),
    };
    let int = |field: Option<&Term<'_>>| match field {
        Some(Term::Integer(i)) => Some(i64::from(*i)),
        _ => None,
    };
    let micros = match fields.microsecond {
        None => 0,
        Some(Term::Tuple(t)) => match t.first() {
            Some(Term::Integer(i)) => u32::try_from(*i).map_err(|_| bad())?,
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    };
    TimeParts {
        is_utc_datetime,
        micros,
        year: int(fields.year),
        month: int(fields.month),
        day: int(fields.day),
        hour: int(fields.hour),
        minute: int(fields.minute),
        second: int(fields.second),
        utc_offset: int(fields.utc_offset),
        std_offset: int(fields.std_offset),
    }
    .to_utc()
    .ok_or_else(bad)
}

/// What an Elixir `NaiveDateTime` or `DateTime` struct says, read by either ETF path. Integer
/// fields are `None` when absent or not an integer.
#[derive(Default)]
struct TimeParts {
    is_utc_datetime: bool,
    micros: u32,
    year: Option<i64>,
    month: Option<i64>,
    day: Option<i64>,
    hour: Option<i64>,
    minute: Option<i64>,
    second: Option<i64>,
    utc_offset: Option<i64>,
    std_offset: Option<i64>,
}

impl TimeParts {
    /// The instant meant, or `None` when the fields do not make one.
    fn to_utc(&self) -> Option<DateTime<Utc>> {
        let small = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
        let year = i32::try_from(self.year?).ok()?;
        let naive = NaiveDate::from_ymd_opt(year, small(self.month)?, small(self.day)?)?
            .and_hms_micro_opt(
                small(self.hour)?,
                small(self.minute)?,
                small(self.second)?,
                self.micros,
            )?;
        let mut utc = naive.and_utc();
        if self.is_utc_datetime {
            // DateTime keeps local wall time plus offsets; UTC = local − (utc_offset + std_offset).
            let offset = self
                .utc_offset?
                .saturating_add(self.std_offset.unwrap_or(0));
            utc = utc.checked_sub_signed(chrono::TimeDelta::try_seconds(offset)?)?;
        }
        Some(utc)
    }
}

/// The fields of an Elixir `NaiveDateTime` or `DateTime` struct that `event_time` reads.
#[derive(Default)]
struct TimeFields<'t, 'a> {
    struct_name: Option<&'t Term<'a>>,
    year: Option<&'t Term<'a>>,
    month: Option<&'t Term<'a>>,
    day: Option<&'t Term<'a>>,
    hour: Option<&'t Term<'a>>,
    minute: Option<&'t Term<'a>>,
    second: Option<&'t Term<'a>>,
    microsecond: Option<&'t Term<'a>>,
    utc_offset: Option<&'t Term<'a>>,
    std_offset: Option<&'t Term<'a>>,
}

fn required_text(field: &str, value: Option<Scalar<'_>>) -> Result<String, DecodeError> {
    match value {
        None | Some(Scalar::Null) => Err(DecodeError::missing(field)),
        Some(Scalar::Str(s)) if is_blank(&s) => {
            Err(DecodeError::invalid(field, "a non-empty string"))
        }
        Some(Scalar::Str(s)) => Ok(s.into_owned()),
        Some(_) => Err(DecodeError::invalid(field, "a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn decodes_the_documented_sample() {
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

    /// A test-only ETF encoder for the terms Elixir producers write.
    #[derive(Debug, Clone)]
    enum T<'a> {
        Atom(&'a str),
        Bin(&'a str),
        Int(i32),
        Map(Vec<(T<'a>, T<'a>)>),
        Tuple(Vec<T<'a>>),
    }

    fn encode(term: &T<'_>, legacy_atoms: bool) -> Vec<u8> {
        fn go(term: &T<'_>, legacy: bool, out: &mut Vec<u8>) {
            match term {
                T::Atom(a) if legacy => {
                    out.push(100);
                    out.extend_from_slice(&(a.len() as u16).to_be_bytes());
                    out.extend_from_slice(a.as_bytes());
                }
                T::Atom(a) => {
                    out.extend_from_slice(&[119, a.len() as u8]);
                    out.extend_from_slice(a.as_bytes());
                }
                T::Bin(b) => {
                    out.push(109);
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(b.as_bytes());
                }
                T::Int(i) if (0..=255).contains(i) => out.extend_from_slice(&[97, *i as u8]),
                T::Int(i) => {
                    out.push(98);
                    out.extend_from_slice(&i.to_be_bytes());
                }
                T::Map(pairs) => {
                    out.push(116);
                    out.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
                    for (k, v) in pairs {
                        go(k, legacy, out);
                        go(v, legacy, out);
                    }
                }
                T::Tuple(items) => {
                    out.extend_from_slice(&[104, items.len() as u8]);
                    for item in items {
                        go(item, legacy, out);
                    }
                }
            }
        }
        let mut out = vec![131];
        go(term, legacy_atoms, &mut out);
        out
    }

    fn naive_date_time() -> T<'static> {
        use T::*;
        Map(vec![
            (Atom("__struct__"), Atom("Elixir.NaiveDateTime")),
            (Atom("calendar"), Atom("Elixir.Calendar.ISO")),
            (Atom("year"), Int(2017)),
            (Atom("month"), Int(4)),
            (Atom("day"), Int(20)),
            (Atom("hour"), Int(19)),
            (Atom("minute"), Int(14)),
            (Atom("second"), Int(13)),
            (Atom("microsecond"), Tuple(vec![Int(0), Int(0)])),
        ])
    }

    fn sample_event(event_time: T<'static>) -> T<'static> {
        use T::*;
        Map(vec![
            (Atom("event_type"), Bin("StatusChangeEvent")),
            (Atom("entity_type"), Bin("EmployeeRequest")),
            (
                Atom("entity_id"),
                Bin("df9f70ee-4b12-4740-b0f5-bb5aea116863"),
            ),
            (
                Atom("properties"),
                Map(vec![
                    (
                        Bin("status"),
                        Map(vec![(Atom("new_value"), Bin("APPROVED"))]),
                    ),
                    (
                        Bin("employee_id"),
                        Map(vec![(
                            Atom("new_value"),
                            Bin("e1453f4c-1077-4e85-8c98-c13ffca0063e"),
                        )]),
                    ),
                ]),
            ),
            (Atom("event_time"), event_time),
            (
                Atom("changed_by"),
                Bin("df9f70ee-4b12-4740-b0f5-bb5aea116863"),
            ),
        ])
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Decoded, DecodeError> {
        let msg = RawMessage {
            topic: "event_manager_topic",
            partition: 0,
            offset: 0,
            key: Some(b""),
            payload: Some(bytes),
            timestamp_ms: None,
        };
        EsozDecoder::default().decode(&msg, &mut Properties::new())
    }

    #[test]
    fn etf_gives_the_same_observation_as_json() {
        let json =
            std::fs::read(crate::formats::testing::dir("esoz").join("status_change_sample.json"))
                .unwrap();
        let from_json = decode_bytes(&json).unwrap();
        for legacy in [false, true] {
            for time in [naive_date_time(), T::Bin("2017-04-20T19:14:13Z")] {
                let bytes = encode(&sample_event(time), legacy);
                assert_eq!(
                    decode_bytes(&bytes).unwrap(),
                    from_json,
                    "legacy atoms: {legacy}"
                );
            }
        }
    }

    #[test]
    fn etf_state_change_with_booleans_nil_and_microseconds() {
        use T::*;
        let time = Map(vec![
            (Atom("__struct__"), Atom("Elixir.NaiveDateTime")),
            (Atom("calendar"), Atom("Elixir.Calendar.ISO")),
            (Atom("year"), Int(2020)),
            (Atom("month"), Int(1)),
            (Atom("day"), Int(2)),
            (Atom("hour"), Int(3)),
            (Atom("minute"), Int(4)),
            (Atom("second"), Int(5)),
            (Atom("microsecond"), Tuple(vec![Int(123456), Int(6)])),
        ]);
        let event = Map(vec![
            (Atom("event_type"), Bin("StateChangeEvent")),
            (Atom("entity_type"), Bin("LegalEntity")),
            (
                Atom("entity_id"),
                Bin("3b1b6c2e-1c1a-4b7e-9a76-1f3e5d4c2b10"),
            ),
            (
                Atom("properties"),
                Map(vec![
                    (
                        Bin("is_suspended"),
                        Map(vec![(Atom("new_value"), Atom("true"))]),
                    ),
                    (
                        Bin("was_active"),
                        Map(vec![(Atom("new_value"), Atom("false"))]),
                    ),
                    (Bin("reason"), Map(vec![(Atom("new_value"), Atom("nil"))])),
                ]),
            ),
            (Atom("event_time"), time),
            (Atom("changed_by"), Atom("nil")),
        ]);
        for legacy in [false, true] {
            let d = decode_bytes(&encode(&event, legacy)).unwrap();
            let o = &d.observations[0];
            assert_eq!(o.event_type, "StateChangeEvent");
            assert_eq!(o.attributes["is_suspended"].as_deref(), Some("true"));
            assert_eq!(o.attributes["was_active"].as_deref(), Some("false"));
            assert_eq!(o.attributes["reason"], None);
            assert_eq!(o.changed_by, None);
            assert_eq!(
                o.event_time.to_rfc3339(),
                "2020-01-02T03:04:05.123456+00:00"
            );
        }
    }

    /// A hand-written term: %{event_type: "S", entity_type: "E", entity_id: "1",
    /// properties: %{"status" => %{new_value: "A"}}, event_time: "2020-01-01T00:00:00Z",
    /// changed_by: nil}, atoms as SMALL_ATOM_UTF8_EXT.
    fn hand_written() -> Vec<u8> {
        [
            &[131u8, 116, 0, 0, 0, 6][..],
            &[119, 10],
            b"event_type",
            &[109, 0, 0, 0, 1, b'S'],
            &[119, 11],
            b"entity_type",
            &[109, 0, 0, 0, 1, b'E'],
            &[119, 9],
            b"entity_id",
            &[109, 0, 0, 0, 1, b'1'],
            &[119, 10],
            b"properties",
            &[116, 0, 0, 0, 1, 109, 0, 0, 0, 6],
            b"status",
            &[116, 0, 0, 0, 1, 119, 9],
            b"new_value",
            &[109, 0, 0, 0, 1, b'A'],
            &[119, 10],
            b"event_time",
            &[109, 0, 0, 0, 20],
            b"2020-01-01T00:00:00Z",
            &[119, 10],
            b"changed_by",
            &[119, 3],
            b"nil",
        ]
        .concat()
    }

    #[test]
    fn etf_hand_written_bytes() {
        let d = decode_bytes(&hand_written()).unwrap();
        let o = &d.observations[0];
        assert_eq!(
            (&*o.event_type, &*o.entity_type, o.entity_id.as_str()),
            ("S", "E", "1")
        );
        assert_eq!(o.attributes["status"].as_deref(), Some("A"));
        // `nil` on its own, as ATOM_EXT: a term, but not an event.
        let e = decode_bytes(&[131, 100, 0, 3, b'n', b'i', b'l']).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::UnsupportedType, "{e}");
    }

    #[test]
    fn malformed_etf_is_rejected_precisely() {
        let good = hand_written();
        for len in 1..good.len() {
            let e = decode_bytes(&good[..len]).unwrap_err();
            assert_eq!(
                e.kind,
                DecodeErrorKind::InvalidEncoding,
                "prefix {len}: {e}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        let mut deep = vec![131u8];
        for _ in 0..10_000 {
            deep.extend_from_slice(&[104, 1]);
        }
        deep.push(106);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (trailing, "1 trailing bytes"),
            (
                vec![131, 80, 0, 0, 0, 10, 120, 156],
                "compressed ETF terms (tag 80)",
            ),
            (vec![131, 109, 255, 255, 255, 255, 1], "truncated"),
            (vec![131, 116, 255, 255, 255, 255], "truncated"),
            (vec![131, 108, 255, 255, 255, 255, 106], "truncated"),
            (vec![131, 82, 0], "tag 82 is not supported"),
            (vec![131, 68, 0], "tag 68 is not supported"),
            (
                vec![131, 88, 119, 1, b'n', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                "tag 88",
            ),
            (
                vec![131, 110, 9, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                "wider than 64 bits",
            ),
            (vec![131, 119, 2, 0xff, 0xfe], "invalid atom text"),
            (deep, "nested deeper than 16"),
            (vec![130, 106], "invalid_encoding"),
        ];
        for (bytes, expected) in cases {
            let e = decode_bytes(&bytes).unwrap_err().to_string();
            assert!(e.contains(expected), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn etf_repeated_keys_numbers_and_key_encodings() {
        use T::*;
        let T::Map(mut pairs) = sample_event(naive_date_time()) else {
            unreachable!()
        };
        pairs.retain(|(k, _)| !matches!(k, Atom("properties")));
        // Of identical keys the last counts (as in eetf's map), even after an invalid one.
        pairs.push((
            Atom("properties"),
            Map(vec![
                (Bin("status"), Map(vec![])),
                (Atom("count"), Map(vec![(Atom("new_value"), Int(-7))])),
                (
                    Bin("status"),
                    Map(vec![(Atom("new_value"), Bin("APPROVED"))]),
                ),
            ]),
        ));
        let d = decode_bytes(&encode(&Map(pairs), false)).unwrap();
        let o = &d.observations[0];
        assert_eq!(o.attributes["status"].as_deref(), Some("APPROVED"));
        assert_eq!(o.attributes["count"].as_deref(), Some("-7"));

        // Floats and big integers are read by eetf and stored in decimal.
        let event = |value: eetf::Term| {
            let inner = eetf::Map::from(std::collections::HashMap::from([(
                eetf::Term::from(eetf::Atom::from("new_value")),
                value,
            )]));
            let props = eetf::Map::from(std::collections::HashMap::from([(
                eetf::Term::from(eetf::Binary::from(&b"score"[..])),
                eetf::Term::from(inner),
            )]));
            let text = |s: &str| eetf::Term::from(eetf::Binary::from(s.as_bytes()));
            let top = eetf::Map::from(std::collections::HashMap::from([
                (eetf::Term::from(eetf::Atom::from("event_type")), text("S")),
                (eetf::Term::from(eetf::Atom::from("entity_type")), text("E")),
                (eetf::Term::from(eetf::Atom::from("entity_id")), text("1")),
                (
                    eetf::Term::from(eetf::Atom::from("event_time")),
                    text("2020-01-01T00:00:00Z"),
                ),
                (
                    eetf::Term::from(eetf::Atom::from("properties")),
                    eetf::Term::from(props),
                ),
            ]));
            let mut out = Vec::new();
            eetf::Term::from(top).encode(&mut out).unwrap();
            out
        };
        for (value, text) in [
            (eetf::Term::from(eetf::Float::try_from(1.5).unwrap()), "1.5"),
            (
                eetf::Term::from(eetf::BigInteger::from(-5_000_000_000_i64)),
                "-5000000000",
            ),
        ] {
            let d = decode_bytes(&event(value)).unwrap();
            assert_eq!(d.observations[0].attributes["score"].as_deref(), Some(text));
        }

        // A binary key of the event map must be UTF-8; an atom key of a property may be used.
        let bad_key = [
            &[131u8, 116, 0, 0, 0, 1, 109, 0, 0, 0, 1, 0xff][..],
            &[119, 3],
            b"nil",
        ]
        .concat();
        let e = decode_bytes(&bad_key).unwrap_err().to_string();
        assert!(e.contains("an atom or string key"), "{e}");
    }

    #[test]
    fn etf_event_shape_errors_name_the_field() {
        use T::*;
        let with = |key: &'static str, value: T<'static>| {
            let T::Map(mut pairs) = sample_event(naive_date_time()) else {
                unreachable!()
            };
            pairs.retain(|(k, _)| !matches!(k, Atom(a) if *a == key));
            pairs.push((Atom(key), value));
            encode(&T::Map(pairs), false)
        };
        let cases = [
            (with("entity_id", Atom("nil")), "`entity_id` is missing"),
            (
                with("entity_type", Int(3)),
                "`entity_type` must be a string",
            ),
            (with("properties", Map(vec![])), "non-empty map"),
            (
                with("properties", Map(vec![(Bin("status"), Map(vec![]))])),
                "`properties.status.new_value` is missing",
            ),
            (
                with(
                    "properties",
                    Map(vec![(
                        Bin("status"),
                        Map(vec![(Atom("new_value"), Tuple(vec![]))]),
                    )]),
                ),
                "`properties.status.new_value` must be",
            ),
            (with("event_time", Bin("soon")), "`event_time` must be"),
            (
                with(
                    "event_time",
                    Map(vec![(Atom("__struct__"), Atom("Elixir.Date"))]),
                ),
                "`event_time` must be",
            ),
        ];
        for (bytes, expected) in cases {
            let e = decode_bytes(&bytes).unwrap_err().to_string();
            assert!(e.contains(expected), "{expected}: {e}");
            assert!(!e.contains("APPROVED") && !e.contains("df9f70ee"), "{e}");
        }
    }

    /// Whether the fast path read the value, checking that the general path reads the same.
    fn fast_path_agrees(bytes: &[u8]) -> bool {
        match read_etf_event(bytes) {
            Some(fast) => {
                assert_eq!(decode_etf_term(bytes), Ok(fast), "{bytes:?}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn the_usual_events_take_the_etf_fast_path() {
        for legacy in [false, true] {
            for time in [naive_date_time(), T::Bin("2017-04-20T19:14:13Z")] {
                assert!(fast_path_agrees(&encode(&sample_event(time), legacy)));
            }
        }
        assert!(fast_path_agrees(&hand_written()));
    }

    /// Strategies for the parts of an event.
    struct Pieces {
        key: BoxedStrategy<T<'static>>,
        text: BoxedStrategy<T<'static>>,
        value: BoxedStrategy<T<'static>>,
        properties: BoxedStrategy<T<'static>>,
        time: BoxedStrategy<T<'static>>,
    }

    fn pieces() -> Pieces {
        use T::*;
        let name =
            || prop::sample::select(&["event_type", "status", "employee_id", "new_value", "a"][..]);
        let text = prop_oneof![
            4 => prop::sample::select(&["StatusChangeEvent", "E", "", " ", "\u{a0}", "\u{e9}t\u{e9}"][..]).prop_map(Bin),
            1 => prop::sample::select(&["nil", "true", "false", "x"][..]).prop_map(Atom),
            1 => any::<i32>().prop_map(Int),
            1 => Just(Tuple(vec![])),
        ];
        let key = move || {
            prop_oneof![
                6 => name().prop_map(Atom),
                1 => name().prop_map(Bin),
                1 => any::<i32>().prop_map(Int),
            ]
        };
        let value = prop_oneof![
            4 => text.clone(),
            1 => (key(), text.clone()).prop_map(|(k, v)| Map(vec![(k, v)])),
        ];
        let inner = proptest::collection::vec(
            (
                prop_oneof![
                    6 => Just(Atom("new_value")),
                    1 => Just(Bin("new_value")),
                    1 => key(),
                ],
                value.clone(),
            ),
            0..3,
        )
        .prop_map(Map);
        let properties = prop_oneof![
            8 => proptest::collection::vec(
                (prop_oneof![3 => name().prop_map(Bin), 1 => name().prop_map(Atom), 1 => any::<i32>().prop_map(Int)], prop_oneof![6 => inner, 1 => text.clone()]),
                0..4,
            )
            .prop_map(Map),
            1 => text.clone(),
        ];
        let field = prop_oneof![
            prop::sample::select(
                &[
                    "year",
                    "month",
                    "day",
                    "hour",
                    "minute",
                    "second",
                    "utc_offset",
                    "std_offset",
                    "calendar",
                    "__struct__",
                    "microsecond"
                ][..]
            )
            .prop_map(Atom),
            Just(Bin("year")),
        ];
        let int = prop_oneof![
            6 => (0..32i32).prop_map(Int),
            2 => (1990..2030i32).prop_map(Int),
            1 => any::<i32>().prop_map(Int),
            1 => Just(Bin("1")),
        ];
        let struct_name =
            prop::sample::select(&["Elixir.NaiveDateTime", "Elixir.DateTime", "Elixir.Date"][..])
                .prop_map(Atom);
        let time = prop_oneof![
            6 => (
                proptest::collection::vec(
                    (field, prop_oneof![4 => int.clone(), 1 => struct_name.clone(), 1 => (int.clone(), int.clone()).prop_map(|(a, b)| Tuple(vec![a, b]))]),
                    0..4,
                ),
                struct_name,
                (
                    [(1..3000i32), (1..13), (1..32), (0..24), (0..60), (0..61)].map(|valid| {
                        prop_oneof![9 => valid.prop_map(Int), 1 => int.clone()]
                    }),
                ),
                (0..1_000_000i32, 0..7i32, any::<bool>()),
                (-50_000..50_000i32, 0..3600i32, any::<bool>()),
            )
                .prop_map(|(extra, name, (ymdhms,), (micro, precision, with_micro), (utc, std, with_offsets))| {
                    let mut pairs = vec![(Atom("__struct__"), name), (Atom("calendar"), Atom("Elixir.Calendar.ISO"))];
                    for (f, v) in ["year", "month", "day", "hour", "minute", "second"].into_iter().zip(ymdhms) {
                        pairs.push((Atom(f), v));
                    }
                    if with_micro {
                        pairs.push((Atom("microsecond"), Tuple(vec![Int(micro), Int(precision)])));
                    }
                    if with_offsets {
                        pairs.push((Atom("utc_offset"), Int(utc)));
                        pairs.push((Atom("std_offset"), Int(std)));
                    }
                    pairs.extend(extra);
                    Map(pairs)
                }),
            2 => prop::sample::select(&["2017-04-20T19:14:13Z", "2020-01-02T03:04:05.123456", "soon"][..]).prop_map(Bin),
            1 => text.clone(),
        ];
        Pieces {
            key: key().boxed(),
            text: text.boxed(),
            value: value.boxed(),
            properties: properties.boxed(),
            time: time.boxed(),
        }
    }

    /// StatusChangeEvent-like terms: the usual shape, with keys missing, repeated, reordered, of
    /// other types or encodings, and values of every kind the general path maps or refuses.
    fn event_like() -> impl Strategy<Value = T<'static>> {
        use T::*;
        let Pieces {
            key,
            text,
            value,
            properties,
            time,
        } = pieces();
        let top_key = |k: &'static str| prop_oneof![8 => Just(Atom(k)), 1 => Just(Bin(k))];
        (
            proptest::collection::vec(
                prop_oneof![
                    (top_key("event_type"), text.clone()),
                    (top_key("entity_type"), text.clone()),
                    (top_key("entity_id"), text.clone()),
                    (top_key("changed_by"), text.clone()),
                    (top_key("properties"), properties),
                    (top_key("event_time"), time),
                    (key, value),
                ],
                0..4,
            ),
            any::<bool>(),
        )
            .prop_map(|(extra, replace)| {
                let T::Map(mut pairs) = sample_event(naive_date_time()) else {
                    unreachable!()
                };
                if replace {
                    // Replace rather than repeat: drop the sample's pairs the extra ones name.
                    pairs.retain(|(k, _)| !extra.iter().any(|(e, _)| same_name(k, e)));
                }
                pairs.extend(extra);
                T::Map(pairs)
            })
            .prop_shuffle_pairs()
    }

    fn same_name(key: &T<'_>, other: &T<'_>) -> bool {
        match (key, other) {
            (T::Atom(a), T::Atom(b) | T::Bin(b)) => a == b,
            _ => false,
        }
    }

    trait ShufflePairs: Strategy<Value = T<'static>> + Sized {
        /// The map's pairs in any order.
        fn prop_shuffle_pairs(self) -> BoxedStrategy<T<'static>>
        where
            Self: 'static,
        {
            self.prop_flat_map(|t| match t {
                T::Map(pairs) => Just(pairs).prop_shuffle().prop_map(T::Map).boxed(),
                other => Just(other).boxed(),
            })
            .boxed()
        }
    }

    impl<S: Strategy<Value = T<'static>>> ShufflePairs for S {}

    proptest! {
        #[test]
        fn the_etf_fast_path_agrees_with_the_general_path(event in event_like(), legacy in any::<bool>()) {
            fast_path_agrees(&encode(&event, legacy));
        }

        #[test]
        fn the_etf_fast_path_agrees_on_properties_and_times(
            properties in pieces().properties,
            time in pieces().time,
            legacy in any::<bool>(),
        ) {
            let T::Map(mut pairs) = sample_event(naive_date_time()) else {
                unreachable!()
            };
            for (k, v) in &mut pairs {
                match k {
                    T::Atom("properties") => *v = properties.clone(),
                    T::Atom("event_time") => *v = time.clone(),
                    _ => {}
                }
            }
            fast_path_agrees(&encode(&T::Map(pairs), legacy));
        }

        #[test]
        fn the_etf_fast_path_agrees_on_damaged_terms(
            event in event_like(),
            legacy in any::<bool>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let mut bytes = encode(&event, legacy);
            let i = at.index(bytes.len());
            if cut {
                bytes.truncate(i);
            } else {
                bytes[i] = byte;
            }
            fast_path_agrees(&bytes);
        }
    }
}
