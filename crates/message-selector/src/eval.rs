//! The compiled form of a selector and its allocation-free, three-valued evaluation.

use std::cmp::Ordering;

use crate::ast::{ArithmeticOp, ComparisonOp, Expr, UnaryOp};
use crate::bytes::str_eq;
use crate::like::LikePattern;
use crate::value::{OwnedValue, PropertySource, Truth, Value};

/// IN lists longer than this are sorted and binary-searched instead of scanned.
const LINEAR_IN_LIMIT: usize = 8;

/// An [`Expr`] prepared for evaluation: LIKE patterns compiled, IN lists split by type.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Literal(OwnedValue),
    /// A constant subtree that evaluated to NULL or unknown at compile time.
    Null,
    Property(Box<str>),
    Not(Box<Node>),
    /// A flattened chain of ANDs.
    All(Box<[Node]>),
    /// A flattened chain of ORs.
    Any(Box<[Node]>),
    Comparison(ComparisonOp, Box<Node>, Box<Node>),
    /// `property = 'literal'` or (negated) `property <> 'literal'`.
    StringEquals {
        property: Box<str>,
        literal: Box<str>,
        negated: bool,
    },
    /// `property op literal`, the most common comparison, without the two recursive calls.
    CompareProperty {
        property: Box<str>,
        op: ComparisonOp,
        literal: OwnedValue,
    },
    /// `property op long`: for a long value, the range of longs accepted; otherwise (a
    /// double value) the orderings accepted.
    CompareLong {
        property: Box<str>,
        literal: i64,
        range: LongRange,
        accept: Accept,
    },
    /// `property op double`: the comparison reduced to the orderings it accepts.
    CompareNumber {
        property: Box<str>,
        literal: Number,
        accept: Accept,
    },
    Arithmetic(ArithmeticOp, Box<Node>, Box<Node>),
    Unary(UnaryOp, Box<Node>),
    Between {
        operand: Box<Node>,
        low: Box<Node>,
        high: Box<Node>,
        negated: bool,
    },
    In {
        property: Box<str>,
        list: InList,
        negated: bool,
    },
    /// `property IN (…)` with a short list of strings only, the common case, evaluated in
    /// place: a string is in the list or not, and anything else is unknown.
    InStrings {
        property: Box<str>,
        /// Not empty, at most [`LINEAR_IN_LIMIT`] items.
        strings: Box<[Box<str>]>,
        negated: bool,
    },
    Like {
        property: Box<str>,
        /// Boxed: a compiled pattern is large and LIKE is one node kind of many.
        pattern: Box<LikePattern>,
        negated: bool,
    },
    IsNull {
        property: Box<str>,
        negated: bool,
    },
}

/// A numeric literal of a comparison.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Number {
    Long(i64),
    Double(f64),
}

impl Number {
    fn of(value: &OwnedValue) -> Option<Number> {
        match *value {
            OwnedValue::Long(n) => Some(Number::Long(n)),
            OwnedValue::Double(d) => Some(Number::Double(d)),
            OwnedValue::String(_) | OwnedValue::Boolean(_) => None,
        }
    }

    /// How `value` orders against the literal, with numeric promotion to double.
    #[inline(always)]
    fn compare_long(self, value: i64) -> Option<Ordering> {
        match self {
            Number::Long(n) => Some(value.cmp(&n)),
            Number::Double(d) => (value as f64).partial_cmp(&d),
        }
    }

    #[inline(always)]
    fn compare_double(self, value: f64) -> Option<Ordering> {
        match self {
            Number::Long(n) => value.partial_cmp(&(n as f64)),
            Number::Double(d) => value.partial_cmp(&d),
        }
    }
}

/// The outcomes a comparison operator accepts, one bit each: less, equal, greater and
/// unordered (a NaN operand, which only `<>` accepts).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accept(u8);

impl Accept {
    const LESS: u8 = 1;
    const EQUAL: u8 = 2;
    const GREATER: u8 = 4;
    const UNORDERED: u8 = 8;

    fn of(op: ComparisonOp) -> Accept {
        Accept(match op {
            ComparisonOp::Eq => Accept::EQUAL,
            ComparisonOp::Ne => Accept::LESS | Accept::GREATER | Accept::UNORDERED,
            ComparisonOp::Lt => Accept::LESS,
            ComparisonOp::Le => Accept::LESS | Accept::EQUAL,
            ComparisonOp::Gt => Accept::GREATER,
            ComparisonOp::Ge => Accept::GREATER | Accept::EQUAL,
        })
    }

    #[inline(always)]
    fn truth(self, ord: Option<Ordering>) -> Truth {
        let bit = match ord {
            Some(Ordering::Less) => Accept::LESS,
            Some(Ordering::Equal) => Accept::EQUAL,
            Some(Ordering::Greater) => Accept::GREATER,
            None => Accept::UNORDERED,
        };
        Truth::from(self.0 & bit != 0)
    }
}

/// The longs that `value op literal` accepts, for a long literal: `lo..=lo + width`, or
/// every long outside that if `outside`. One subtraction and compare, instead of an
/// ordering looked up in an [`Accept`] mask.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LongRange {
    lo: i64,
    width: u64,
    outside: bool,
}

impl LongRange {
    fn of(op: ComparisonOp, n: i64) -> LongRange {
        let range = |lo: Option<i64>, hi: Option<i64>| match (lo, hi) {
            // `lo..=hi` with `hi - lo` as an unsigned distance.
            (Some(lo), Some(hi)) => LongRange {
                lo,
                width: hi.wrapping_sub(lo) as u64,
                outside: false,
            },
            // Nothing (`< i64::MIN`, `> i64::MAX`): everything outside everything.
            _ => LongRange {
                lo: i64::MIN,
                width: u64::MAX,
                outside: true,
            },
        };
        match op {
            ComparisonOp::Eq => range(Some(n), Some(n)),
            ComparisonOp::Ne => LongRange {
                outside: true,
                ..range(Some(n), Some(n))
            },
            ComparisonOp::Lt => range(Some(i64::MIN), n.checked_sub(1)),
            ComparisonOp::Le => range(Some(i64::MIN), Some(n)),
            ComparisonOp::Gt => range(n.checked_add(1), Some(i64::MAX)),
            ComparisonOp::Ge => range(Some(n), Some(i64::MAX)),
        }
    }

    #[inline(always)]
    fn contains(self, value: i64) -> bool {
        (value.wrapping_sub(self.lo) as u64 <= self.width) != self.outside
    }
}

/// The literals of an IN list, grouped by type.
#[derive(Debug, Clone)]
pub(crate) struct InList {
    /// Sorted and de-duplicated when longer than [`LINEAR_IN_LIMIT`].
    strings: Box<[Box<str>]>,
    numbers: Box<[Value<'static>]>,
}

impl InList {
    fn new(list: &[OwnedValue]) -> InList {
        let mut strings: Vec<Box<str>> = Vec::new();
        let mut numbers = Vec::new();
        for item in list {
            match item {
                OwnedValue::String(s) => strings.push(s.as_str().into()),
                OwnedValue::Long(n) => numbers.push(Value::Long(*n)),
                OwnedValue::Double(d) => numbers.push(Value::Double(*d)),
                // The parser only accepts string and numeric literals in IN lists; a boolean
                // never equals a string or a number, so it only makes the result unknown.
                OwnedValue::Boolean(_) => numbers.push(Value::Boolean(false)),
            }
        }
        if strings.len() > LINEAR_IN_LIMIT {
            strings.sort_unstable();
            strings.dedup();
        }
        InList {
            strings: strings.into_boxed_slice(),
            numbers: numbers.into_boxed_slice(),
        }
    }

    /// `value IN (…)` as the OR of `value = item` over the items.
    #[inline]
    fn contains(&self, value: Value<'_>) -> Truth {
        let (found, others) = match value {
            Value::String(s) => {
                let found = if self.strings.len() > LINEAR_IN_LIMIT {
                    self.strings
                        .binary_search_by(|item| (**item).cmp(s))
                        .is_ok()
                } else {
                    self.strings.iter().any(|item| str_eq(item, s))
                };
                (found, !self.numbers.is_empty())
            }
            Value::Long(_) | Value::Double(_) => {
                let found = self
                    .numbers
                    .iter()
                    .any(|item| compare(ComparisonOp::Eq, Some(value), Some(*item)).is_true());
                (found, !self.strings.is_empty())
            }
            Value::Boolean(_) => (false, true),
        };
        if found {
            Truth::True
        } else if others {
            // Comparing with an item of another type is unknown, and false OR unknown is unknown.
            Truth::Unknown
        } else {
            Truth::False
        }
    }
}

impl Node {
    fn compare_number(property: Box<str>, op: ComparisonOp, literal: &OwnedValue) -> Node {
        match Number::of(literal) {
            Some(Number::Long(n)) => Node::CompareLong {
                property,
                literal: n,
                range: LongRange::of(op, n),
                accept: Accept::of(op),
            },
            Some(number) => Node::CompareNumber {
                property,
                literal: number,
                accept: Accept::of(op),
            },
            None => Node::CompareProperty {
                property,
                op,
                literal: literal.clone(),
            },
        }
    }

    /// Compiles a syntax tree, folding constant subtrees.
    pub(crate) fn compile(expr: &Expr) -> Node {
        let node = Node::compile_unfolded(expr);
        if matches!(node, Node::Literal(_) | Node::Null) || !node.is_constant() {
            return node;
        }
        // Evaluation is pure, so a subtree without properties has one value forever.
        match node.value(&NoProperties) {
            Some(value) => Node::Literal(value.to_owned_value()),
            None => Node::Null,
        }
    }

    fn compile_unfolded(expr: &Expr) -> Node {
        let boxed = |e: &Expr| Box::new(Node::compile(e));
        match expr {
            Expr::Literal(value) => Node::Literal(value.clone()),
            Expr::Identifier(name) => Node::Property(name.as_str().into()),
            Expr::Not(operand) => Node::Not(boxed(operand)),
            Expr::And(..) => {
                let mut children = Vec::new();
                flatten(expr, &mut children, &|e| match e {
                    Expr::And(l, r) => Some((&**l, &**r)),
                    _ => None,
                });
                Node::All(children.into_boxed_slice())
            }
            Expr::Or(..) => {
                let mut children = Vec::new();
                flatten(expr, &mut children, &|e| match e {
                    Expr::Or(l, r) => Some((&**l, &**r)),
                    _ => None,
                });
                Node::Any(children.into_boxed_slice())
            }
            Expr::Comparison { op, left, right } => {
                match (Node::compile(left), Node::compile(right)) {
                    (Node::Property(property), Node::Literal(OwnedValue::String(literal)))
                        if matches!(op, ComparisonOp::Eq | ComparisonOp::Ne) =>
                    {
                        Node::StringEquals {
                            property,
                            literal: literal.into_boxed_str(),
                            negated: *op == ComparisonOp::Ne,
                        }
                    }
                    (Node::Property(property), Node::Literal(literal))
                        if Number::of(&literal).is_some() =>
                    {
                        Node::compare_number(property, *op, &literal)
                    }
                    (Node::Literal(literal), Node::Property(property))
                        if Number::of(&literal).is_some() =>
                    {
                        Node::compare_number(property, op.flipped(), &literal)
                    }
                    (Node::Property(property), Node::Literal(literal)) => Node::CompareProperty {
                        property,
                        op: *op,
                        literal,
                    },
                    (Node::Literal(literal), Node::Property(property)) => Node::CompareProperty {
                        property,
                        op: op.flipped(),
                        literal,
                    },
                    (left, right) => Node::Comparison(*op, Box::new(left), Box::new(right)),
                }
            }
            Expr::Arithmetic { op, left, right } => {
                Node::Arithmetic(*op, boxed(left), boxed(right))
            }
            Expr::Unary { op, operand } => Node::Unary(*op, boxed(operand)),
            Expr::Between {
                operand,
                low,
                high,
                negated,
            } => Node::Between {
                operand: boxed(operand),
                low: boxed(low),
                high: boxed(high),
                negated: *negated,
            },
            Expr::In {
                identifier,
                list,
                negated,
            } => match strings_only(list) {
                Some(strings) if !strings.is_empty() && strings.len() <= LINEAR_IN_LIMIT => {
                    Node::InStrings {
                        property: identifier.as_str().into(),
                        strings,
                        negated: *negated,
                    }
                }
                _ => Node::In {
                    property: identifier.as_str().into(),
                    list: InList::new(list),
                    negated: *negated,
                },
            },
            Expr::Like {
                identifier,
                pattern,
                escape,
                negated,
            } => Node::Like {
                property: identifier.as_str().into(),
                pattern: Box::new(LikePattern::new(pattern, *escape)),
                negated: *negated,
            },
            Expr::IsNull {
                identifier,
                negated,
            } => Node::IsNull {
                property: identifier.as_str().into(),
                negated: *negated,
            },
        }
    }

    /// Whether the node refers to no property, so that it always has the same value.
    fn is_constant(&self) -> bool {
        match self {
            Node::Literal(_) | Node::Null => true,
            Node::Property(_)
            | Node::StringEquals { .. }
            | Node::CompareProperty { .. }
            | Node::CompareLong { .. }
            | Node::CompareNumber { .. }
            | Node::In { .. }
            | Node::InStrings { .. }
            | Node::Like { .. }
            | Node::IsNull { .. } => false,
            Node::Not(operand) | Node::Unary(_, operand) => operand.is_constant(),
            Node::All(children) | Node::Any(children) => children.iter().all(Node::is_constant),
            Node::Comparison(_, left, right) | Node::Arithmetic(_, left, right) => {
                left.is_constant() && right.is_constant()
            }
            Node::Between {
                operand, low, high, ..
            } => operand.is_constant() && low.is_constant() && high.is_constant(),
        }
    }

    /// Evaluates the node as a condition.
    #[inline]
    pub(crate) fn truth<P: PropertySource + ?Sized>(&self, props: &P) -> Truth {
        match self {
            Node::All(children) => all(children, props),
            Node::Any(children) => any(children, props),
            Node::Not(operand) => !operand.truth(props),
            _ => self.leaf_truth(props),
        }
    }

    /// The common leaf conditions, evaluated in place; anything else is passed on.
    ///
    /// Always inlined into the AND/OR loops, so that a chain of leaves costs no calls; the
    /// rare kinds go to [`Node::truth_cold`] to keep the inlined code small.
    #[inline(always)]
    fn leaf_truth<P: PropertySource + ?Sized>(&self, props: &P) -> Truth {
        match self {
            Node::StringEquals {
                property,
                literal,
                negated,
            } => match props.get(property) {
                Some(Value::String(s)) => Truth::from(str_eq(s, literal) != *negated),
                _ => Truth::Unknown,
            },
            Node::CompareProperty {
                property,
                op,
                literal,
            } => compare(*op, props.get(property), Some(literal.as_value())),
            Node::CompareLong {
                property,
                literal,
                range,
                accept,
            } => match props.get(property) {
                Some(Value::Long(v)) => Truth::from(range.contains(v)),
                Some(Value::Double(v)) => accept.truth(Number::Long(*literal).compare_double(v)),
                _ => Truth::Unknown,
            },
            Node::CompareNumber {
                property,
                literal,
                accept,
            } => match props.get(property) {
                Some(Value::Long(v)) => accept.truth(literal.compare_long(v)),
                Some(Value::Double(v)) => accept.truth(literal.compare_double(v)),
                _ => Truth::Unknown,
            },
            Node::In {
                property,
                list,
                negated,
            } => match props.get(property) {
                None => Truth::Unknown,
                Some(value) => negate_if(list.contains(value), *negated),
            },
            Node::InStrings {
                property,
                strings,
                negated,
            } => match props.get(property) {
                Some(Value::String(s)) => {
                    // A loop rather than `Iterator::any`, which was left as a call.
                    let mut found = false;
                    for item in strings.iter() {
                        if str_eq(item, s) {
                            found = true;
                            break;
                        }
                    }
                    Truth::from(found != *negated)
                }
                // NULL is unknown, and so is comparing a number or boolean with strings
                // (as `InList::contains` has it for a list without numbers).
                _ => Truth::Unknown,
            },
            Node::Like {
                property,
                pattern,
                negated,
            } => match props.get(property) {
                Some(Value::String(s)) => Truth::from(pattern.matches(s) != *negated),
                _ => Truth::Unknown,
            },
            Node::IsNull { property, negated } => {
                Truth::from(props.get(property).is_none() != *negated)
            }
            Node::Literal(OwnedValue::Boolean(b)) => Truth::from(*b),
            Node::All(..) | Node::Any(..) | Node::Not(..) => self.truth(props),
            _ => self.truth_cold(props),
        }
    }

    /// The less common conditions: general comparisons, BETWEEN and values used as
    /// conditions.
    #[inline(never)]
    fn truth_cold<P: PropertySource + ?Sized>(&self, props: &P) -> Truth {
        match self {
            Node::Comparison(op, left, right) => {
                compare(*op, left.value(props), right.value(props))
            }
            Node::Between {
                operand,
                low,
                high,
                negated,
            } => {
                let value = operand.value(props);
                let within = compare(ComparisonOp::Ge, value, low.value(props)).and(compare(
                    ComparisonOp::Le,
                    value,
                    high.value(props),
                ));
                negate_if(within, *negated)
            }
            Node::Literal(_)
            | Node::Null
            | Node::Property(_)
            | Node::Arithmetic(..)
            | Node::Unary(..) => match self.value(props) {
                Some(Value::Boolean(b)) => Truth::from(b),
                _ => Truth::Unknown,
            },
            _ => self.truth(props),
        }
    }

    /// Evaluates the node as a value; `None` is NULL (including unknown conditions).
    fn value<'a, P: PropertySource + ?Sized>(&'a self, props: &'a P) -> Option<Value<'a>> {
        match self {
            Node::Literal(value) => Some(value.as_value()),
            Node::Null => None,
            Node::Property(name) => props.get(name),
            Node::Arithmetic(op, left, right) => {
                arithmetic(*op, left.value(props)?, right.value(props)?)
            }
            Node::Unary(op, operand) => match (op, operand.value(props)?) {
                (UnaryOp::Plus, v @ (Value::Long(_) | Value::Double(_))) => Some(v),
                (UnaryOp::Minus, Value::Long(n)) => n.checked_neg().map(Value::Long),
                (UnaryOp::Minus, Value::Double(d)) => Some(Value::Double(-d)),
                _ => None,
            },
            _ => match self.truth(props) {
                Truth::True => Some(Value::Boolean(true)),
                Truth::False => Some(Value::Boolean(false)),
                Truth::Unknown => None,
            },
        }
    }
}

/// Three-valued AND over `children`, short-circuiting on false.
///
/// One loop over the children rather than unrolled copies: the loop body is small enough
/// for the property lookups to be inlined into it, which measured faster than unrolling.
#[inline]
fn all<P: PropertySource + ?Sized>(children: &[Node], props: &P) -> Truth {
    let mut result = Truth::True;
    for child in children {
        match child.leaf_truth(props) {
            Truth::False => return Truth::False,
            Truth::Unknown => result = Truth::Unknown,
            Truth::True => {}
        }
    }
    result
}

/// Three-valued OR over `children`, short-circuiting on true.
///
/// One loop over the children rather than unrolled copies: the loop body is small enough
/// for the property lookups to be inlined into it, which measured faster than unrolling.
#[inline]
fn any<P: PropertySource + ?Sized>(children: &[Node], props: &P) -> Truth {
    let mut result = Truth::False;
    for child in children {
        match child.leaf_truth(props) {
            Truth::True => return Truth::True,
            Truth::Unknown => result = Truth::Unknown,
            Truth::False => {}
        }
    }
    result
}

/// The items of an IN list if they are all strings.
fn strings_only(list: &[OwnedValue]) -> Option<Box<[Box<str>]>> {
    list.iter()
        .map(|item| match item {
            OwnedValue::String(s) => Some(s.as_str().into()),
            _ => None,
        })
        .collect()
}

/// Collects the operands of a chain of one associative operator, left to right.
fn flatten<'e>(
    expr: &'e Expr,
    out: &mut Vec<Node>,
    split: &dyn Fn(&'e Expr) -> Option<(&'e Expr, &'e Expr)>,
) {
    match split(expr) {
        Some((left, right)) => {
            flatten(left, out, split);
            flatten(right, out, split);
        }
        None => out.push(Node::compile(expr)),
    }
}

/// The property source of constant folding: every property is absent.
struct NoProperties;

impl PropertySource for NoProperties {
    fn get(&self, _name: &str) -> Option<Value<'_>> {
        None
    }
}

#[inline]
fn negate_if(truth: Truth, negated: bool) -> Truth {
    if negated {
        !truth
    } else {
        truth
    }
}

/// Compares two values: numbers with promotion to double, strings and booleans only for
/// `=` and `<>`; NULL, unlike types and ordering of non-numbers are unknown.
#[inline]
fn compare(op: ComparisonOp, left: Option<Value<'_>>, right: Option<Value<'_>>) -> Truth {
    let (Some(left), Some(right)) = (left, right) else {
        return Truth::Unknown;
    };
    match (left, right) {
        (Value::Long(l), Value::Long(r)) => ordering(op, Some(l.cmp(&r))),
        (Value::Long(l), Value::Double(r)) => ordering(op, (l as f64).partial_cmp(&r)),
        (Value::Double(l), Value::Long(r)) => ordering(op, l.partial_cmp(&(r as f64))),
        (Value::Double(l), Value::Double(r)) => ordering(op, l.partial_cmp(&r)),
        (Value::String(l), Value::String(r)) => equality(op, l == r),
        (Value::Boolean(l), Value::Boolean(r)) => equality(op, l == r),
        _ => Truth::Unknown,
    }
}

/// Applies `op` to an ordering; `None` (a NaN operand) is unequal to everything, as in Java.
#[inline]
fn ordering(op: ComparisonOp, ord: Option<Ordering>) -> Truth {
    let Some(ord) = ord else {
        return Truth::from(op == ComparisonOp::Ne);
    };
    Truth::from(match op {
        ComparisonOp::Eq => ord == Ordering::Equal,
        ComparisonOp::Ne => ord != Ordering::Equal,
        ComparisonOp::Lt => ord == Ordering::Less,
        ComparisonOp::Le => ord != Ordering::Greater,
        ComparisonOp::Gt => ord == Ordering::Greater,
        ComparisonOp::Ge => ord != Ordering::Less,
    })
}

#[inline]
fn equality(op: ComparisonOp, equal: bool) -> Truth {
    match op {
        ComparisonOp::Eq => Truth::from(equal),
        ComparisonOp::Ne => Truth::from(!equal),
        _ => Truth::Unknown,
    }
}

/// Arithmetic with Java numeric promotion, except that `/` always divides in double, as
/// ActiveMQ, Artemis, Qpid and RabbitMQ evaluate it (`5 / 2` is `2.5`). Long overflow,
/// division by zero and non-finite double results are NULL (unknown) rather than wrapping,
/// panicking or producing infinity.
fn arithmetic(op: ArithmeticOp, left: Value<'_>, right: Value<'_>) -> Option<Value<'static>> {
    let (l, r) = match (left, right) {
        (Value::Long(l), Value::Long(r)) => {
            let result = match op {
                ArithmeticOp::Add => l.checked_add(r),
                ArithmeticOp::Subtract => l.checked_sub(r),
                ArithmeticOp::Multiply => l.checked_mul(r),
                ArithmeticOp::Divide => return divide(l as f64, r as f64),
            };
            return result.map(Value::Long);
        }
        (Value::Long(l), Value::Double(r)) => (l as f64, r),
        (Value::Double(l), Value::Long(r)) => (l, r as f64),
        (Value::Double(l), Value::Double(r)) => (l, r),
        _ => return None,
    };
    let result = match op {
        ArithmeticOp::Add => l + r,
        ArithmeticOp::Subtract => l - r,
        ArithmeticOp::Multiply => l * r,
        ArithmeticOp::Divide => return divide(l, r),
    };
    result.is_finite().then_some(Value::Double(result))
}

/// Double division; a zero divisor or a result that is not finite is NULL (unknown).
fn divide(l: f64, r: f64) -> Option<Value<'static>> {
    if r == 0.0 {
        return None;
    }
    let result = l / r;
    result.is_finite().then_some(Value::Double(result))
}

#[cfg(test)]
mod tests {
    use super::{ComparisonOp, LongRange};

    #[test]
    fn long_ranges_agree_with_comparisons() {
        let edges = [
            i64::MIN,
            i64::MIN + 1,
            -2,
            -1,
            0,
            1,
            2,
            i64::MAX - 1,
            i64::MAX,
        ];
        for op in [
            ComparisonOp::Eq,
            ComparisonOp::Ne,
            ComparisonOp::Lt,
            ComparisonOp::Le,
            ComparisonOp::Gt,
            ComparisonOp::Ge,
        ] {
            for n in edges {
                let range = LongRange::of(op, n);
                for v in edges {
                    let expected = match op {
                        ComparisonOp::Eq => v == n,
                        ComparisonOp::Ne => v != n,
                        ComparisonOp::Lt => v < n,
                        ComparisonOp::Le => v <= n,
                        ComparisonOp::Gt => v > n,
                        ComparisonOp::Ge => v >= n,
                    };
                    assert_eq!(range.contains(v), expected, "{v} {op:?} {n}");
                }
            }
        }
    }
}
