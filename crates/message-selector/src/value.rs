//! Typed property values, the property lookup trait and the three-valued truth type.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;

/// A borrowed property value of one of the four JMS selector types.
///
/// JMS `byte`, `short`, `int` and `long` properties map to [`Value::Long`];
/// `float` and `double` map to [`Value::Double`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A string.
    String(&'a str),
    /// An exact numeric (JMS `long` and narrower integer types).
    Long(i64),
    /// An approximate numeric (JMS `double` and `float`).
    Double(f64),
    /// A boolean.
    Boolean(bool),
}

impl Value<'_> {
    /// Copies the value into an [`OwnedValue`].
    pub fn to_owned_value(&self) -> OwnedValue {
        match *self {
            Value::String(s) => OwnedValue::String(s.to_owned()),
            Value::Long(n) => OwnedValue::Long(n),
            Value::Double(d) => OwnedValue::Double(d),
            Value::Boolean(b) => OwnedValue::Boolean(b),
        }
    }
}

/// An owned property value; also the type of literals in the syntax tree.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedValue {
    /// A string.
    String(String),
    /// An exact numeric.
    Long(i64),
    /// An approximate numeric.
    Double(f64),
    /// A boolean.
    Boolean(bool),
}

impl OwnedValue {
    /// Borrows the value as a [`Value`].
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::String(s) => Value::String(s),
            OwnedValue::Long(n) => Value::Long(*n),
            OwnedValue::Double(d) => Value::Double(*d),
            OwnedValue::Boolean(b) => Value::Boolean(*b),
        }
    }
}

impl From<&str> for OwnedValue {
    fn from(s: &str) -> Self {
        OwnedValue::String(s.to_owned())
    }
}

impl From<String> for OwnedValue {
    fn from(s: String) -> Self {
        OwnedValue::String(s)
    }
}

impl From<i64> for OwnedValue {
    fn from(n: i64) -> Self {
        OwnedValue::Long(n)
    }
}

impl From<f64> for OwnedValue {
    fn from(d: f64) -> Self {
        OwnedValue::Double(d)
    }
}

impl From<bool> for OwnedValue {
    fn from(b: bool) -> Self {
        OwnedValue::Boolean(b)
    }
}

impl From<Value<'_>> for OwnedValue {
    fn from(v: Value<'_>) -> Self {
        v.to_owned_value()
    }
}

/// Where a selector looks up message properties by name.
///
/// Returning `None` means the property is absent, which a selector treats as SQL `NULL`.
/// Implementations should be cheap: [`crate::Selector::evaluate`] calls `get` once per
/// property reference it evaluates.
pub trait PropertySource {
    /// Returns the value of the property called `name`, or `None` if the message has none.
    fn get(&self, name: &str) -> Option<Value<'_>>;
}

impl<S: BuildHasher> PropertySource for HashMap<String, OwnedValue, S> {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        HashMap::get(self, name).map(OwnedValue::as_value)
    }
}

impl PropertySource for BTreeMap<String, OwnedValue> {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        BTreeMap::get(self, name).map(OwnedValue::as_value)
    }
}

impl<T: PropertySource + ?Sized> PropertySource for &T {
    fn get(&self, name: &str) -> Option<Value<'_>> {
        (**self).get(name)
    }
}

/// The result of evaluating a condition under SQL three-valued logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Truth {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The condition involves `NULL` or a type mismatch, so it neither holds nor fails.
    Unknown,
}

impl Truth {
    /// SQL-92 `AND`: false wins over unknown, unknown wins over true.
    #[inline]
    pub fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::False, _) | (_, Truth::False) => Truth::False,
            (Truth::True, Truth::True) => Truth::True,
            _ => Truth::Unknown,
        }
    }

    /// SQL-92 `OR`: true wins over unknown, unknown wins over false.
    #[inline]
    pub fn or(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::True, _) | (_, Truth::True) => Truth::True,
            (Truth::False, Truth::False) => Truth::False,
            _ => Truth::Unknown,
        }
    }

    /// Whether this is [`Truth::True`], the only value that selects a message.
    #[inline]
    pub fn is_true(self) -> bool {
        self == Truth::True
    }
}

impl std::ops::Not for Truth {
    type Output = Truth;

    /// SQL-92 `NOT`: `NOT unknown` is unknown.
    #[inline]
    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

impl From<bool> for Truth {
    #[inline]
    fn from(b: bool) -> Self {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }
}

impl fmt::Display for Truth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Truth::True => "true",
            Truth::False => "false",
            Truth::Unknown => "unknown",
        })
    }
}
