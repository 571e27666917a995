//! The syntax tree of a selector and its canonical printed form.

use std::fmt::{self, Write as _};

use crate::value::OwnedValue;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ComparisonOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl ComparisonOp {
    /// The operator as written in a selector.
    pub fn as_str(self) -> &'static str {
        match self {
            ComparisonOp::Eq => "=",
            ComparisonOp::Ne => "<>",
            ComparisonOp::Lt => "<",
            ComparisonOp::Le => "<=",
            ComparisonOp::Gt => ">",
            ComparisonOp::Ge => ">=",
        }
    }

    /// The operator with its operands swapped: `a < b` is `b > a`.
    pub fn flipped(self) -> ComparisonOp {
        match self {
            ComparisonOp::Eq => ComparisonOp::Eq,
            ComparisonOp::Ne => ComparisonOp::Ne,
            ComparisonOp::Lt => ComparisonOp::Gt,
            ComparisonOp::Le => ComparisonOp::Ge,
            ComparisonOp::Gt => ComparisonOp::Lt,
            ComparisonOp::Ge => ComparisonOp::Le,
        }
    }
}

/// A binary arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArithmeticOp {
    /// `+`
    Add,
    /// `-`
    Subtract,
    /// `*`
    Multiply,
    /// `/`
    Divide,
}

impl ArithmeticOp {
    /// The operator as written in a selector.
    pub fn as_str(self) -> &'static str {
        match self {
            ArithmeticOp::Add => "+",
            ArithmeticOp::Subtract => "-",
            ArithmeticOp::Multiply => "*",
            ArithmeticOp::Divide => "/",
        }
    }

    fn precedence(self) -> u8 {
        match self {
            ArithmeticOp::Add | ArithmeticOp::Subtract => PREC_ADDITIVE,
            ArithmeticOp::Multiply | ArithmeticOp::Divide => PREC_MULTIPLICATIVE,
        }
    }
}

/// A unary arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnaryOp {
    /// Unary `+`: the numeric operand itself.
    Plus,
    /// Unary `-`: negation.
    Minus,
}

impl UnaryOp {
    /// The operator as written in a selector.
    pub fn as_str(self) -> &'static str {
        match self {
            UnaryOp::Plus => "+",
            UnaryOp::Minus => "-",
        }
    }
}

/// A parsed selector expression.
///
/// The parser accepts any operand types the grammar allows; type mismatches are
/// resolved at evaluation time (they evaluate to unknown). A sign directly in front of a
/// numeric literal is part of the literal: `-5` is `Literal(Long(-5))`, while `-(5)` is
/// `Unary { op: Minus, .. }`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Expr {
    /// A string, numeric or boolean literal.
    Literal(OwnedValue),
    /// A reference to a message property.
    Identifier(String),
    /// `NOT operand`
    Not(Box<Expr>),
    /// `left AND right`
    And(Box<Expr>, Box<Expr>),
    /// `left OR right`
    Or(Box<Expr>, Box<Expr>),
    /// `left op right` for `= <> < <= > >=`
    Comparison {
        /// The operator.
        op: ComparisonOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// `left op right` for `+ - * /`
    Arithmetic {
        /// The operator.
        op: ArithmeticOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// `+operand` or `-operand`
    Unary {
        /// The operator.
        op: UnaryOp,
        /// The operand.
        operand: Box<Expr>,
    },
    /// `operand [NOT] BETWEEN low AND high`
    Between {
        /// The tested expression.
        operand: Box<Expr>,
        /// Inclusive lower bound.
        low: Box<Expr>,
        /// Inclusive upper bound.
        high: Box<Expr>,
        /// `NOT BETWEEN`.
        negated: bool,
    },
    /// `identifier [NOT] IN (literal, …)`
    In {
        /// The tested property.
        identifier: String,
        /// The literals, never empty.
        list: Vec<OwnedValue>,
        /// `NOT IN`.
        negated: bool,
    },
    /// `identifier [NOT] LIKE 'pattern' [ESCAPE 'c']`
    Like {
        /// The tested property.
        identifier: String,
        /// The pattern, with `%` and `_` wildcards.
        pattern: String,
        /// The escape character, if any.
        escape: Option<char>,
        /// `NOT LIKE`.
        negated: bool,
    },
    /// `identifier IS [NOT] NULL`
    IsNull {
        /// The tested property.
        identifier: String,
        /// `IS NOT NULL`.
        negated: bool,
    },
}

// Binding strength, loosest first; the printer parenthesises by these.
const PREC_OR: u8 = 1;
const PREC_AND: u8 = 2;
const PREC_NOT: u8 = 3;
const PREC_COMPARISON: u8 = 4;
const PREC_ADDITIVE: u8 = 5;
const PREC_MULTIPLICATIVE: u8 = 6;
const PREC_UNARY: u8 = 7;
const PREC_PRIMARY: u8 = 8;

impl Expr {
    fn precedence(&self) -> u8 {
        match self {
            Expr::Literal(_) | Expr::Identifier(_) => PREC_PRIMARY,
            Expr::Unary { .. } => PREC_UNARY,
            Expr::Arithmetic { op, .. } => op.precedence(),
            Expr::Comparison { .. }
            | Expr::Between { .. }
            | Expr::In { .. }
            | Expr::Like { .. }
            | Expr::IsNull { .. } => PREC_COMPARISON,
            Expr::Not(_) => PREC_NOT,
            Expr::And(..) => PREC_AND,
            Expr::Or(..) => PREC_OR,
        }
    }

    /// Prints `self`, parenthesised if it binds less tightly than `min`.
    fn fmt_at(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.precedence() < min {
            f.write_char('(')?;
            self.fmt_bare(f)?;
            f.write_char(')')
        } else {
            self.fmt_bare(f)
        }
    }

    fn fmt_bare(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(value) => fmt_literal(value, f),
            Expr::Identifier(name) => f.write_str(name),
            Expr::Not(operand) => {
                f.write_str("NOT ")?;
                operand.fmt_at(f, PREC_NOT)
            }
            Expr::And(left, right) => {
                left.fmt_at(f, PREC_AND)?;
                f.write_str(" AND ")?;
                right.fmt_at(f, PREC_AND + 1)
            }
            Expr::Or(left, right) => {
                left.fmt_at(f, PREC_OR)?;
                f.write_str(" OR ")?;
                right.fmt_at(f, PREC_OR + 1)
            }
            Expr::Comparison { op, left, right } => {
                left.fmt_at(f, PREC_ADDITIVE)?;
                write!(f, " {} ", op.as_str())?;
                right.fmt_at(f, PREC_ADDITIVE)
            }
            Expr::Arithmetic { op, left, right } => {
                let prec = op.precedence();
                left.fmt_at(f, prec)?;
                write!(f, " {} ", op.as_str())?;
                right.fmt_at(f, prec + 1)
            }
            Expr::Unary { op, operand } => {
                f.write_str(op.as_str())?;
                // A sign right before a number would be read back as part of the literal.
                let numeric_literal = matches!(
                    **operand,
                    Expr::Literal(OwnedValue::Long(_) | OwnedValue::Double(_))
                );
                if numeric_literal {
                    f.write_char('(')?;
                    operand.fmt_bare(f)?;
                    f.write_char(')')
                } else {
                    operand.fmt_at(f, PREC_UNARY)
                }
            }
            Expr::Between {
                operand,
                low,
                high,
                negated,
            } => {
                operand.fmt_at(f, PREC_ADDITIVE)?;
                f.write_str(if *negated {
                    " NOT BETWEEN "
                } else {
                    " BETWEEN "
                })?;
                low.fmt_at(f, PREC_ADDITIVE)?;
                f.write_str(" AND ")?;
                high.fmt_at(f, PREC_ADDITIVE)
            }
            Expr::In {
                identifier,
                list,
                negated,
            } => {
                f.write_str(identifier)?;
                f.write_str(if *negated { " NOT IN (" } else { " IN (" })?;
                for (i, item) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    fmt_literal(item, f)?;
                }
                f.write_char(')')
            }
            Expr::Like {
                identifier,
                pattern,
                escape,
                negated,
            } => {
                f.write_str(identifier)?;
                f.write_str(if *negated { " NOT LIKE " } else { " LIKE " })?;
                fmt_string(pattern, f)?;
                if let Some(c) = escape {
                    f.write_str(" ESCAPE ")?;
                    fmt_string(c.encode_utf8(&mut [0; 4]), f)?;
                }
                Ok(())
            }
            Expr::IsNull {
                identifier,
                negated,
            } => {
                f.write_str(identifier)?;
                f.write_str(if *negated { " IS NOT NULL" } else { " IS NULL" })
            }
        }
    }
}

fn fmt_literal(value: &OwnedValue, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match value {
        OwnedValue::String(s) => fmt_string(s, f),
        OwnedValue::Long(n) => write!(f, "{n}"),
        // Debug is the shortest text that reads back to the same f64 and always has a
        // '.' or an exponent, so it lexes as an approximate numeric again.
        OwnedValue::Double(d) => write!(f, "{d:?}"),
        OwnedValue::Boolean(true) => f.write_str("TRUE"),
        OwnedValue::Boolean(false) => f.write_str("FALSE"),
    }
}

fn fmt_string(s: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_char('\'')?;
    for (i, part) in s.split('\'').enumerate() {
        if i > 0 {
            f.write_str("''")?;
        }
        f.write_str(part)?;
    }
    f.write_char('\'')
}

/// Prints the canonical form: keywords upper-case, single spaces, minimal parentheses.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_bare(f)
    }
}
