//! JSON parsing that refuses duplicate object keys. serde_json keeps the last of two equal keys
//! silently, so `{"clinicApiKey":"wrong","clinicApiKey":"<real>"}` would authenticate with a
//! value other readers of the same body may not pick: webhook bodies with a duplicated key, at
//! any depth, are ambiguous and refused (docs/architecture.md, "Hostile input").

use std::fmt;

use std::cell::RefCell;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Longest key repeated in an error message; longer ones are cut.
const KEY_IN_MESSAGE: usize = 64;

/// Why a body is not acceptable JSON.
#[derive(Debug)]
pub(super) enum ParseError {
    /// The same key appears twice in one object.
    Duplicate {
        /// The repeated key, cut to a bounded length.
        key: String,
        /// Line of the second occurrence.
        line: usize,
        /// Column just after it.
        column: usize,
    },
    /// Not JSON at all (or nested too deep).
    Syntax {
        /// Line of the error.
        line: usize,
        /// Column of the error.
        column: usize,
    },
}

/// Parses `bytes`, refusing any object with a duplicated key.
pub(super) fn parse(bytes: &[u8]) -> Result<Value, ParseError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let result = Unique(&duplicate)
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    result.map_err(|e| {
        let (line, column) = (e.line(), e.column());
        match duplicate.into_inner() {
            Some(key) => ParseError::Duplicate { key, line, column },
            None => ParseError::Syntax { line, column },
        }
    })
}

/// A seed that builds a [`Value`] and records the first duplicated key it meets.
#[derive(Clone, Copy)]
struct Unique<'a>(&'a RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity; serde_json never hands one over.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                *self.0.borrow_mut() = Some(key.chars().take(KEY_IN_MESSAGE).collect());
                return Err(de::Error::custom("duplicate key"));
            }
            let value = access.next_value_seed(self)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        let text = r#"{"a":[1,-2,3.5,18446744073709551615,true,null,"s\u00e9"],"b":{"c":{}}}"#;
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parse(text.as_bytes()).unwrap(), expected);
    }

    #[test]
    fn a_duplicated_key_is_named_at_any_depth() {
        for (text, key) in [
            (r#"{"clinicApiKey":"a","clinicApiKey":"b"}"#, "clinicApiKey"),
            (r#"{"object":{"id":1,"id":2}}"#, "id"),
            (
                r#"{"e":{"x":[{"hub.topic":"a","hub.topic":"a"}]}}"#,
                "hub.topic",
            ),
            (r#"{"k\"q":1,"k\u0022q":2}"#, "k\"q"),
        ] {
            match parse(text.as_bytes()) {
                Err(ParseError::Duplicate { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let long = format!(r#"{{"{k}":1,"{k}":2}}"#, k = "k".repeat(300));
        match parse(long.as_bytes()) {
            Err(ParseError::Duplicate { key, .. }) => assert_eq!(key.len(), KEY_IN_MESSAGE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_are_not_duplicates() {
        for text in ["{not json", r#"{"a":1,}"#, "", r#"{"a":1} {"a":1}"#] {
            assert!(
                matches!(parse(text.as_bytes()), Err(ParseError::Syntax { .. })),
                "{text}"
            );
        }
        let deep = "[".repeat(10_000);
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(ParseError::Syntax { .. })
        ));
    }
}
