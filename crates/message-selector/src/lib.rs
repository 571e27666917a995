//! JMS 2.0 message selectors: a parser and a three-valued evaluator over typed message
//! properties.
//!
//! A selector is a conditional expression in the SQL-92 subset defined by the JMS 2.0
//! specification (section 3.8.1.1). A message is selected when the selector evaluates to
//! [`Truth::True`]; both `False` and `Unknown` reject it.
//!
//! ```
//! use std::collections::HashMap;
//! use message_selector::{OwnedValue, Selector, Truth};
//!
//! let selector: Selector = "eventType IN ('created', 'updated') AND version > 3".parse()?;
//! let mut props = HashMap::new();
//! props.insert("eventType".to_owned(), OwnedValue::from("created"));
//! props.insert("version".to_owned(), OwnedValue::Long(4));
//! assert!(selector.matches(&props));
//!
//! props.remove("version"); // absent = NULL, so `version > 3` is unknown
//! assert_eq!(selector.evaluate(&props), Truth::Unknown);
//! # Ok::<(), message_selector::ParseError>(())
//! ```
//!
//! # Semantics in brief
//!
//! * Absent properties are `NULL`; comparisons and arithmetic involving `NULL` are unknown,
//!   and `AND`, `OR` and `NOT` follow SQL-92 three-valued logic.
//! * Types are never converted: a string is not a number, a number is not a boolean.
//!   Longs and doubles compare and combine with numeric promotion to double; `/` always
//!   divides in double (`5 / 2` is `2.5`), as the reference JMS brokers do.
//!   Comparing unlike types is unknown, as are `<`, `<=`, `>`, `>=` on strings or booleans
//!   and arithmetic on non-numbers.
//! * Long overflow, division by zero and arithmetic results that are not finite are
//!   unknown: evaluation never panics, wraps or yields infinity.
//! * `LIKE` matches the whole string, character by character, in linear-ish time.
//! * `IN` lists hold string literals as JMS requires and, as an extension, numeric literals.
//! * The empty (or all-whitespace) selector selects everything: it parses as `TRUE`.
//!
//! The crate README gives the full grammar and the truth tables.
//!
//! # JMS header fields
//!
//! This crate knows nothing about `JMSDeliveryMode`, `JMSPriority`, `JMSMessageID`,
//! `JMSTimestamp`, `JMSCorrelationID` or `JMSType`: they are ordinary identifiers here.
//! A host that offers JMS semantics should answer them in its [`PropertySource`], mapping
//! them to its own message metadata (for Kafka, e.g. timestamp, key or headers).
//!
//! # Limits
//!
//! Selectors longer than [`MAX_LENGTH`] bytes, and syntax trees deeper than [`MAX_DEPTH`],
//! are rejected with a [`ParseError`] instead of risking a stack overflow.

#![deny(rust_2018_idioms, unreachable_pub, missing_docs)]

mod ast;
mod bytes;
mod error;
mod eval;
mod lexer;
mod like;
mod parser;
mod value;

use std::fmt;
use std::str::FromStr;

pub use ast::{ArithmeticOp, ComparisonOp, Expr, UnaryOp};
pub use error::ParseError;
pub use parser::{MAX_DEPTH, MAX_LENGTH};
pub use value::{OwnedValue, PropertySource, Truth, Value};

use eval::Node;

/// Compiles and runs the README's examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// A compiled message selector: parse once, evaluate against many messages.
///
/// Evaluation does not allocate. A `Selector` is immutable, `Send` and `Sync`, so one
/// instance can be shared by every consumer thread.
#[derive(Clone)]
pub struct Selector {
    source: String,
    ast: Expr,
    root: Node,
    identifiers: Vec<String>,
}

impl Selector {
    /// Parses and compiles `src`. Empty or whitespace-only input selects every message.
    pub fn parse(src: &str) -> Result<Selector, ParseError> {
        let ast = parser::parse(src)?;
        let root = Node::compile(&ast);
        let mut identifiers = Vec::new();
        collect_identifiers(&ast, &mut identifiers);
        Ok(Selector {
            source: src.to_owned(),
            ast,
            root,
            identifiers,
        })
    }

    /// Evaluates the selector against a message's properties under three-valued logic.
    #[inline]
    pub fn evaluate<P: PropertySource + ?Sized>(&self, props: &P) -> Truth {
        self.root.truth(props)
    }

    /// Whether the selector selects the message, i.e. evaluates to [`Truth::True`].
    #[inline]
    pub fn matches<P: PropertySource + ?Sized>(&self, props: &P) -> bool {
        self.evaluate(props) == Truth::True
    }

    /// The distinct property names the selector refers to, in order of first appearance.
    pub fn identifiers(&self) -> impl Iterator<Item = &str> {
        self.identifiers.iter().map(String::as_str)
    }

    /// The text the selector was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The syntax tree; [`Expr`]'s `Display` prints the canonical form.
    pub fn ast(&self) -> &Expr {
        &self.ast
    }
}

fn collect_identifiers(expr: &Expr, out: &mut Vec<String>) {
    let mut add = |name: &String| {
        if !out.contains(name) {
            out.push(name.clone());
        }
    };
    match expr {
        Expr::Literal(_) => {}
        Expr::Identifier(name)
        | Expr::In {
            identifier: name, ..
        }
        | Expr::Like {
            identifier: name, ..
        }
        | Expr::IsNull {
            identifier: name, ..
        } => add(name),
        Expr::Not(operand) | Expr::Unary { operand, .. } => collect_identifiers(operand, out),
        Expr::And(left, right)
        | Expr::Or(left, right)
        | Expr::Comparison { left, right, .. }
        | Expr::Arithmetic { left, right, .. } => {
            collect_identifiers(left, out);
            collect_identifiers(right, out);
        }
        Expr::Between {
            operand, low, high, ..
        } => {
            collect_identifiers(operand, out);
            collect_identifiers(low, out);
            collect_identifiers(high, out);
        }
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selector")
            .field("source", &self.source)
            .field("ast", &self.ast)
            .finish_non_exhaustive()
    }
}

/// Prints the canonical form; parsing it again yields an equal [`Selector::ast`].
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.ast, f)
    }
}

impl FromStr for Selector {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Selector, ParseError> {
        Selector::parse(s)
    }
}
