//! JMS message selectors (interface placeholder until the full implementation is merged).
#![allow(missing_docs)]
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    String(&'a str),
    Long(i64),
    Double(f64),
    Boolean(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub enum OwnedValue {
    String(String),
    Long(i64),
    Double(f64),
    Boolean(bool),
}

impl OwnedValue {
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::String(s) => Value::String(s),
            OwnedValue::Long(v) => Value::Long(*v),
            OwnedValue::Double(v) => Value::Double(*v),
            OwnedValue::Boolean(v) => Value::Boolean(*v),
        }
    }
}

pub trait PropertySource {
    fn get(&self, name: &str) -> Option<Value<'_>>;
}

impl PropertySource for HashMap<String, OwnedValue> {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        HashMap::get(self, name).map(OwnedValue::as_value)
    }
}

impl PropertySource for BTreeMap<String, OwnedValue> {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        BTreeMap::get(self, name).map(OwnedValue::as_value)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Selector {
    source: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl Selector {
    pub fn parse(src: &str) -> Result<Selector, ParseError> {
        if src.trim().is_empty() {
            Ok(Selector {
                source: String::new(),
            })
        } else {
            Err(ParseError {
                column: 1,
                message: "selectors are not supported yet".into(),
            })
        }
    }
    pub fn evaluate<P: PropertySource + ?Sized>(&self, _props: &P) -> Truth {
        Truth::True
    }
    pub fn matches<P: PropertySource + ?Sized>(&self, props: &P) -> bool {
        self.evaluate(props) == Truth::True
    }
    pub fn source(&self) -> &str {
        &self.source
    }
}
