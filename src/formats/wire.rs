//! Building blocks shared by the JSON decoders: precise typed parsing, lenient scalars, time
//! fall-backs and strict option tables.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{DecodeError, DecodeErrorKind, FormatConfigError, RawMessage};

/// Parses JSON into a typed wire struct. A type mismatch names the field path (map keys that do
/// not look like field names are masked, so no message content reaches the reason).
pub(crate) fn parse_typed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    // Fast path without path tracking; only a failing message pays for the precise reason.
    // Text checked as UTF-8 once up front lets serde_json skip the check of every string it
    // borrows; for any input both readers accept the same values, so the result is the same.
    let fast = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    };
    if let Ok(wire) = fast {
        return Ok(wire);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let wire: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = safe_path(e.path());
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
    Ok(wire)
}

fn safe_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                if is_field_name(key) {
                    out.push_str(key);
                } else {
                    out.push_str("<key>");
                }
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Whether a map key looks like a field name rather than data (safe to show in a reason).
pub(crate) fn is_field_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Whether text is empty or only whitespace, i.e. `s.trim().is_empty()`, without walking the
/// text when it starts with a visible ASCII character (the usual case).
pub(crate) fn is_blank(s: &str) -> bool {
    match s.as_bytes().first() {
        None => true,
        Some(&b) if b.is_ascii() && !char::from(b).is_whitespace() => false,
        Some(_) => s.trim().is_empty(),
    }
}

/// When the message does not say when the change happened: the Kafka timestamp, else now.
pub(crate) fn receive_time(msg: &RawMessage<'_>) -> DateTime<Utc> {
    msg.timestamp_ms
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now)
}

/// A JSON value of which only scalars are kept; containers are skipped without allocation.
#[derive(Debug)]
pub(crate) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Bool(bool),
    Number(String),
    Null,
    Container,
}

impl<'a> Scalar<'a> {
    /// Attribute values are stored as text: booleans as `true`/`false`, numbers as written.
    pub(crate) fn into_text(self) -> Result<Option<String>, ()> {
        match self {
            Scalar::Str(s) => Ok(Some(s.into_owned())),
            Scalar::Bool(b) => Ok(Some(b.to_string())),
            Scalar::Number(n) => Ok(Some(n)),
            Scalar::Null => Ok(None),
            Scalar::Container => Err(()),
        }
    }

    /// An identifier: a non-empty string or an integer, as text.
    pub(crate) fn into_id(self) -> Option<Cow<'a, str>> {
        match self {
            Scalar::Str(s) if !is_blank(&s) => Some(s),
            Scalar::Number(n) if n.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
                Some(Cow::Owned(n))
            }
            _ => None,
        }
    }
}

impl<'a> FromJson<'a> for Scalar<'a> {
    fn text(s: Cow<'a, str>) -> Self {
        Scalar::Str(s)
    }
    fn boolean(b: bool) -> Self {
        Scalar::Bool(b)
    }
    fn number(n: &dyn fmt::Display) -> Self {
        Scalar::Number(n.to_string())
    }
    fn null() -> Self {
        Scalar::Null
    }
    fn container() -> Self {
        Scalar::Container
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_lenient::<'de, Scalar<'de>, D>(d)
    }
}

/// A lenient field type: what it keeps of each kind of JSON value. Containers are skipped
/// without allocation, so a type error names the field rather than failing the parse.
pub(crate) trait FromJson<'a>: Sized {
    /// A string, borrowed from the input where it has no escapes.
    fn text(s: Cow<'a, str>) -> Self;
    /// `true` or `false`.
    fn boolean(b: bool) -> Self;
    /// A number (formatted only by types that keep it).
    fn number(n: &dyn fmt::Display) -> Self;
    /// `null`.
    fn null() -> Self;
    /// A list or an object.
    fn container() -> Self;
}

/// Reads any JSON value into a [`FromJson`] type.
pub(crate) fn deserialize_lenient<'de, T: FromJson<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: FromJson<'de>> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
            Ok(T::text(Cow::Borrowed(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            Ok(T::text(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
            Ok(T::text(Cow::Owned(v)))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
            Ok(T::boolean(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            Ok(T::number(&v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            Ok(T::number(&v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            Ok(T::number(&v))
        }
        fn visit_unit<E: de::Error>(self) -> Result<T, E> {
            Ok(T::null())
        }
        fn visit_none<E: de::Error>(self) -> Result<T, E> {
            Ok(T::null())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
            deserialize_lenient(d)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<T, A::Error> {
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(T::container())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<T, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(T::container())
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// An optional text field: absent, `null` and `""` are `None`; other non-strings are an error.
pub(crate) fn opt_text<'a>(
    field: &str,
    value: Option<Scalar<'a>>,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match value {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) if s.is_empty() => Ok(None),
        Some(Scalar::Str(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::invalid(field, "a string")),
    }
}

/// A required, non-blank text field.
pub(crate) fn req_text<'a>(
    field: &str,
    value: Option<Scalar<'a>>,
) -> Result<Cow<'a, str>, DecodeError> {
    match value {
        None | Some(Scalar::Null) => Err(DecodeError::missing(field)),
        Some(Scalar::Str(s)) if is_blank(&s) => {
            Err(DecodeError::invalid(field, "a non-empty string"))
        }
        Some(Scalar::Str(s)) => Ok(s),
        Some(_) => Err(DecodeError::invalid(field, "a string")),
    }
}

/// Reads a topic rule's `[options]` strictly: every key must be known to the format.
pub(crate) struct OptionTable<'a> {
    format: &'static str,
    table: &'a toml::Table,
}

impl<'a> OptionTable<'a> {
    /// Checks that `table` has only `known` keys.
    pub(crate) fn new(
        format: &'static str,
        table: &'a toml::Table,
        known: &[&str],
    ) -> Result<Self, FormatConfigError> {
        if let Some(key) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(FormatConfigError(format!(
                "unknown option `{key}` for format `{format}` (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(Self { format, table })
    }

    fn wrong(&self, key: &str, expected: &str) -> FormatConfigError {
        FormatConfigError(format!(
            "option `{key}` of format `{}` must be {expected}",
            self.format
        ))
    }

    /// A boolean option.
    pub(crate) fn bool(&self, key: &str, default: bool) -> Result<bool, FormatConfigError> {
        match self.table.get(key) {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(_) => Err(self.wrong(key, "true or false")),
        }
    }

    /// A list of strings.
    pub(crate) fn strings(
        &self,
        key: &str,
        default: &[&str],
    ) -> Result<Vec<String>, FormatConfigError> {
        match self.table.get(key) {
            None => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.wrong(key, "a list of strings"))
                })
                .collect(),
            Some(_) => Err(self.wrong(key, "a list of strings")),
        }
    }

    /// A table of string → string.
    pub(crate) fn string_map(
        &self,
        key: &str,
    ) -> Result<BTreeMap<String, String>, FormatConfigError> {
        match self.table.get(key) {
            None => Ok(BTreeMap::new()),
            Some(toml::Value::Table(t)) => t
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_owned()))
                        .ok_or_else(|| self.wrong(key, "a table of strings"))
                })
                .collect(),
            Some(_) => Err(self.wrong(key, "a table of strings")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blank_is_trimmed_empty() {
        for s in [
            "",
            " ",
            "\t\n\r",
            "\x0b",
            "\x0c",
            "\u{a0}",
            "\u{2003} ",
            "a",
            " a",
            "\u{e9}",
            "\0",
        ] {
            assert_eq!(is_blank(s), s.trim().is_empty(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn blank_agrees_with_trim(s in "\\PC{0,4}|[ \t\n\x0b\x0c\r\u{85}\u{a0}\u{2000}-\u{200a}a]{0,4}") {
            prop_assert_eq!(is_blank(&s), s.trim().is_empty());
        }
    }
}
