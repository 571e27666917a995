//! Property tests: the parser never panics, printing round-trips, evaluation never panics
//! and agrees with three-valued logic, and LIKE agrees with a reference matcher.

use std::collections::HashMap;

use message_selector::{ArithmeticOp, ComparisonOp, Expr, OwnedValue, Selector, Truth, UnaryOp};
use proptest::prelude::*;

const NAMES: [&str; 8] = ["a", "b", "c", "d", "é1", "$x", "_y", "ANDY"];

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(&NAMES[..]).prop_map(str::to_owned)
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-c%_!'é ]{0,6}",
        1 => any::<String>(),
    ]
}

fn finite_double() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |d| d.is_finite()),
        prop::sample::select(&[0.0, -0.0, 0.5, 2.5, 1e300, -1e-300][..]),
    ]
}

fn long() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -3i64..10,
        prop::sample::select(&[i64::MIN, i64::MAX, 0][..]),
    ]
}

fn value() -> impl Strategy<Value = OwnedValue> {
    prop_oneof![
        string().prop_map(OwnedValue::String),
        long().prop_map(OwnedValue::Long),
        finite_double().prop_map(OwnedValue::Double),
        any::<bool>().prop_map(OwnedValue::Boolean),
    ]
}

fn in_item() -> impl Strategy<Value = OwnedValue> {
    prop_oneof![
        2 => string().prop_map(OwnedValue::String),
        1 => long().prop_map(OwnedValue::Long),
        1 => finite_double().prop_map(OwnedValue::Double),
    ]
}

/// Whether `pattern` ends with an escape character that escapes nothing.
fn dangling(pattern: &str, escape: char) -> bool {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape && chars.next().is_none() {
            return true;
        }
    }
    false
}

fn like_expr() -> impl Strategy<Value = Expr> {
    (
        name(),
        string(),
        prop::option::of(prop::sample::select(&['!', '\\', 'é', '\'', '%'][..])),
        any::<bool>(),
    )
        .prop_map(|(identifier, mut pattern, escape, negated)| {
            if let Some(e) = escape {
                if dangling(&pattern, e) {
                    pattern.push(e);
                }
            }
            Expr::Like {
                identifier,
                pattern,
                escape,
                negated,
            }
        })
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        value().prop_map(Expr::Literal),
        name().prop_map(Expr::Identifier),
        (
            name(),
            prop::collection::vec(in_item(), 1..4),
            any::<bool>()
        )
            .prop_map(|(identifier, list, negated)| Expr::In {
                identifier,
                list,
                negated
            }),
        like_expr(),
        (name(), any::<bool>()).prop_map(|(identifier, negated)| Expr::IsNull {
            identifier,
            negated
        }),
    ]
}

fn comparison_op() -> impl Strategy<Value = ComparisonOp> {
    prop::sample::select(
        &[
            ComparisonOp::Eq,
            ComparisonOp::Ne,
            ComparisonOp::Lt,
            ComparisonOp::Le,
            ComparisonOp::Gt,
            ComparisonOp::Ge,
        ][..],
    )
}

fn arithmetic_op() -> impl Strategy<Value = ArithmeticOp> {
    prop::sample::select(
        &[
            ArithmeticOp::Add,
            ArithmeticOp::Subtract,
            ArithmeticOp::Multiply,
            ArithmeticOp::Divide,
        ][..],
    )
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(6, 64, 3, |inner| {
        let boxed = inner.clone().prop_map(Box::new);
        prop_oneof![
            boxed.clone().prop_map(Expr::Not),
            (boxed.clone(), boxed.clone()).prop_map(|(l, r)| Expr::And(l, r)),
            (boxed.clone(), boxed.clone()).prop_map(|(l, r)| Expr::Or(l, r)),
            (comparison_op(), boxed.clone(), boxed.clone())
                .prop_map(|(op, left, right)| Expr::Comparison { op, left, right }),
            (arithmetic_op(), boxed.clone(), boxed.clone())
                .prop_map(|(op, left, right)| Expr::Arithmetic { op, left, right }),
            (
                prop::sample::select(&[UnaryOp::Plus, UnaryOp::Minus][..]),
                boxed.clone()
            )
                .prop_map(|(op, operand)| Expr::Unary { op, operand }),
            (boxed.clone(), boxed.clone(), boxed, any::<bool>()).prop_map(
                |(operand, low, high, negated)| Expr::Between {
                    operand,
                    low,
                    high,
                    negated
                }
            ),
        ]
    })
}

fn properties() -> impl Strategy<Value = HashMap<String, OwnedValue>> {
    prop::collection::hash_map(name(), value(), 0..NAMES.len())
}

const TOKENS: [&str; 40] = [
    "a",
    "b",
    "é",
    "NOT",
    "AND",
    "OR",
    "BETWEEN",
    "LIKE",
    "IN",
    "IS",
    "NULL",
    "TRUE",
    "FALSE",
    "ESCAPE",
    "(",
    ")",
    ",",
    "=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "'x'",
    "''",
    "'%_'",
    "'",
    "1",
    "-9223372036854775808",
    "9223372036854775808",
    "1.5",
    ".5",
    "7E3",
    "1E",
    "0x1F",
    "!",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parser_never_panics_on_arbitrary_text(src in any::<String>()) {
        let _ = Selector::parse(&src);
    }

    #[test]
    fn parser_never_panics_on_selector_like_text(src in "[a-cA-Z0-9 ().,'=<>+*/%_!-]{0,40}") {
        if let Ok(selector) = Selector::parse(&src) {
            let reparsed = Selector::parse(&selector.to_string());
            prop_assert_eq!(reparsed.map(|s| s.ast().clone()), Ok(selector.ast().clone()));
        }
    }

    #[test]
    fn parser_never_panics_on_token_soup(
        tokens in prop::collection::vec(prop::sample::select(&TOKENS[..]), 0..24),
        glue in prop::sample::select(&[" ", "", "\n"][..]),
    ) {
        let src = tokens.join(glue);
        if let Ok(selector) = Selector::parse(&src) {
            let printed = selector.to_string();
            let reparsed = Selector::parse(&printed).map(|s| s.ast().clone());
            prop_assert_eq!(reparsed, Ok(selector.ast().clone()), "{} -> {}", src, printed);
        }
    }

    #[test]
    fn printing_round_trips(expr in expr()) {
        let printed = expr.to_string();
        let selector = Selector::parse(&printed)
            .map_err(|e| TestCaseError::fail(format!("{printed:?}: {e}")))?;
        prop_assert_eq!(selector.ast(), &expr, "{}", printed);
        prop_assert_eq!(selector.to_string(), printed);
    }

    #[test]
    fn evaluation_never_panics_and_obeys_not(expr in expr(), props in properties()) {
        let printed = expr.to_string();
        let selector = Selector::parse(&printed)
            .map_err(|e| TestCaseError::fail(format!("{printed:?}: {e}")))?;
        let truth = selector.evaluate(&props);
        prop_assert_eq!(selector.matches(&props), truth == Truth::True);

        let negated = Selector::parse(&format!("NOT ({printed})"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(negated.evaluate(&props), !truth);

        let absent = Selector::parse(&format!("({printed}) OR TRUE"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(absent.evaluate(&props), Truth::True);
    }

    #[test]
    fn identifiers_lists_every_referenced_name_once(expr in expr()) {
        let selector = Selector::parse(&expr.to_string())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut expected = Vec::new();
        referenced(&expr, &mut expected);
        let actual: Vec<&str> = selector.identifiers().collect();
        prop_assert_eq!(actual, expected);
    }

    /// `a op literal` is compiled to specialised nodes; `a op b`, with the literal's value in
    /// property `b`, goes through the general comparison. Both must agree for every
    /// operator, type and operand order.
    #[test]
    fn compiled_comparisons_agree_with_the_general_path(
        op in comparison_op(),
        literal in value(),
        property in prop_oneof![
            8 => value().prop_map(Some),
            1 => Just(Some(OwnedValue::Double(f64::NAN))),
            1 => Just(None),
        ],
        literal_first in any::<bool>(),
    ) {
        let a = || Box::new(Expr::Identifier("a".to_owned()));
        let b = || Box::new(Expr::Identifier("b".to_owned()));
        let lit = || Box::new(Expr::Literal(literal.clone()));
        let (fast, slow) = if literal_first {
            (
                Expr::Comparison { op, left: lit(), right: a() },
                Expr::Comparison { op, left: b(), right: a() },
            )
        } else {
            (
                Expr::Comparison { op, left: a(), right: lit() },
                Expr::Comparison { op, left: a(), right: b() },
            )
        };
        let mut props: HashMap<String, OwnedValue> =
            property.into_iter().map(|v| ("a".to_owned(), v)).collect();
        props.insert("b".to_owned(), literal.clone());
        let fast = Selector::parse(&fast.to_string())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let slow = Selector::parse(&slow.to_string())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(fast.evaluate(&props), slow.evaluate(&props), "{}", fast);
    }

    /// The same for long literals against long and double values, drawn close together
    /// (and at the ends of the range) so that equal and neighbouring values are common.
    #[test]
    fn compiled_long_comparisons_agree_with_the_general_path(
        op in comparison_op(),
        literal in prop_oneof![-3i64..4, prop::sample::select(&[i64::MIN, i64::MIN + 1, i64::MAX - 1, i64::MAX][..])],
        property in prop_oneof![
            4 => (-3i64..4).prop_map(OwnedValue::Long),
            1 => prop::sample::select(&[i64::MIN, i64::MIN + 1, i64::MAX - 1, i64::MAX][..])
                .prop_map(OwnedValue::Long),
            1 => prop::sample::select(&[-1.5, -1.0, 0.0, 0.5, 1.0, 9.3e18, -9.3e18, f64::NAN][..])
                .prop_map(OwnedValue::Double),
        ],
    ) {
        let fast = Selector::parse(&format!("a {} {literal}", op.as_str()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let slow = Selector::parse(&format!("a {} b", op.as_str()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let props: HashMap<String, OwnedValue> = [
            ("a".to_owned(), property),
            ("b".to_owned(), OwnedValue::Long(literal)),
        ]
        .into_iter()
        .collect();
        prop_assert_eq!(fast.evaluate(&props), slow.evaluate(&props), "{}", fast);
    }

    /// `a IN (x, y, …)` is compiled to specialised nodes (a plain string list among them);
    /// `a = b0 OR a = b1 OR …`, with the items' values in properties `b0`, `b1`, …, goes
    /// through the general comparison, and JMS defines IN as exactly that OR.
    #[test]
    fn in_lists_agree_with_ors_of_general_comparisons(
        items in prop_oneof![
            3 => prop::collection::vec(string().prop_map(OwnedValue::String), 1..6),
            1 => prop::collection::vec(in_item(), 1..12),
        ],
        property in prop_oneof![
            4 => value().prop_map(Some),
            1 => Just(None),
        ],
        pick in any::<prop::sample::Index>(),
        negated in any::<bool>(),
    ) {
        let list = Expr::In {
            identifier: "a".to_owned(),
            list: items.clone(),
            negated,
        };
        let slots: Vec<String> = (0..items.len()).map(|i| format!("b{i}")).collect();
        let ors = slots
            .iter()
            .map(|slot| format!("a = {slot}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let ors = if negated { format!("NOT ({ors})") } else { format!("({ors})") };
        let mut props: HashMap<String, OwnedValue> =
            slots.iter().cloned().zip(items.iter().cloned()).collect();
        // Often the property is one of the items, so that the list is also searched
        // successfully.
        let value = match property {
            Some(_) if pick.index(3) == 0 => Some(pick.get(&items).clone()),
            other => other,
        };
        if let Some(value) = value {
            props.insert("a".to_owned(), value);
        }
        let fast = Selector::parse(&list.to_string())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let slow = Selector::parse(&ors).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(fast.evaluate(&props), slow.evaluate(&props), "{} vs {}", fast, ors);
    }

    /// `/` divides in double whatever the operand types (as the reference brokers do), while
    /// `+ - *` of two longs stay exact long arithmetic; a zero divisor, an overflow or a
    /// result that is not finite is unknown.
    #[test]
    fn arithmetic_agrees_with_the_reference_brokers(
        op in arithmetic_op(),
        left in prop_oneof![long().prop_map(OwnedValue::Long), finite_double().prop_map(OwnedValue::Double)],
        right in prop_oneof![long().prop_map(OwnedValue::Long), finite_double().prop_map(OwnedValue::Double)],
    ) {
        let as_f64 = |v: &OwnedValue| match *v {
            OwnedValue::Long(n) => n as f64,
            OwnedValue::Double(d) => d,
            _ => unreachable!("numbers only"),
        };
        let double = |d: f64| d.is_finite().then_some(OwnedValue::Double(d));
        let (l, r) = (as_f64(&left), as_f64(&right));
        let expected = match (op, &left, &right) {
            (ArithmeticOp::Divide, _, _) if r == 0.0 => None,
            (ArithmeticOp::Divide, _, _) => double(l / r),
            (ArithmeticOp::Add, OwnedValue::Long(a), OwnedValue::Long(b)) => a.checked_add(*b).map(OwnedValue::Long),
            (ArithmeticOp::Subtract, OwnedValue::Long(a), OwnedValue::Long(b)) => a.checked_sub(*b).map(OwnedValue::Long),
            (ArithmeticOp::Multiply, OwnedValue::Long(a), OwnedValue::Long(b)) => a.checked_mul(*b).map(OwnedValue::Long),
            (ArithmeticOp::Add, _, _) => double(l + r),
            (ArithmeticOp::Subtract, _, _) => double(l - r),
            (ArithmeticOp::Multiply, _, _) => double(l * r),
            (other, _, _) => return Err(TestCaseError::fail(format!("no reference for {other:?}"))),
        };
        let mut props: HashMap<String, OwnedValue> =
            [("a".to_owned(), left.clone()), ("b".to_owned(), right.clone())].into_iter().collect();
        // `c` holds the expected result with its type; an unknown result leaves `c` absent.
        let typed = Selector::parse(&format!("a {} b = c", op.as_str()))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        match expected {
            Some(value) => {
                props.insert("c".to_owned(), value);
                prop_assert_eq!(typed.evaluate(&props), Truth::True, "{:?} {} {:?}", left, op.as_str(), right);
            }
            None => {
                let compared = Selector::parse(&format!("a {op} b = 0 OR a {op} b <> 0", op = op.as_str()))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(compared.evaluate(&props), Truth::Unknown, "{:?} {} {:?}", left, op.as_str(), right);
            }
        }
    }

    /// Patterns of literal pieces and `%` only, over texts that contain those pieces, so that
    /// the prefix/contains/suffix matchers are exercised, not only the general one.
    #[test]
    fn literal_like_patterns_agree_with_a_reference_matcher(
        pieces in prop::collection::vec("(ab|ba|é|b|xy)", 0..4),
        leading in any::<bool>(),
        trailing in any::<bool>(),
        text in "(ab|ba|é|b|xy|a){0,8}",
    ) {
        let mut pattern = String::new();
        if leading { pattern.push('%'); }
        pattern.push_str(&pieces.join("%"));
        if trailing { pattern.push('%'); }
        let selector = Selector::parse(&format!("v LIKE '{pattern}'"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let props: HashMap<String, OwnedValue> =
            [("v".to_owned(), OwnedValue::from(text.as_str()))].into_iter().collect();
        let expected = reference_like(&pattern, '!', &text);
        prop_assert_eq!(selector.matches(&props), expected, "{:?} LIKE {:?}", text, pattern);
    }

    #[test]
    fn like_agrees_with_a_reference_matcher(
        pattern in "[ab%_!é]{0,8}",
        text in "[abé%_!]{0,10}",
    ) {
        let escaped = if dangling(&pattern, '!') { format!("{pattern}!") } else { pattern };
        let selector = Selector::parse(&format!("v LIKE '{escaped}' ESCAPE '!'"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let props: HashMap<String, OwnedValue> =
            [("v".to_owned(), OwnedValue::from(text.as_str()))].into_iter().collect();
        let expected = reference_like(&escaped, '!', &text);
        prop_assert_eq!(selector.matches(&props), expected, "{:?} LIKE {:?}", text, escaped);
    }
}

/// Names in order of first appearance, walking the tree left to right.
fn referenced<'e>(expr: &'e Expr, out: &mut Vec<&'e str>) {
    let mut add = |name: &'e str| {
        if !out.contains(&name) {
            out.push(name);
        }
    };
    match expr {
        Expr::Identifier(name) => add(name),
        Expr::In { identifier, .. }
        | Expr::Like { identifier, .. }
        | Expr::IsNull { identifier, .. } => add(identifier),
        Expr::Not(e) | Expr::Unary { operand: e, .. } => referenced(e, out),
        Expr::And(l, r)
        | Expr::Or(l, r)
        | Expr::Comparison {
            left: l, right: r, ..
        }
        | Expr::Arithmetic {
            left: l, right: r, ..
        } => {
            referenced(l, out);
            referenced(r, out);
        }
        Expr::Between {
            operand, low, high, ..
        } => {
            referenced(operand, out);
            referenced(low, out);
            referenced(high, out);
        }
        _ => {}
    }
}

/// Dynamic-programming LIKE over characters: obviously right, quadratic, fine for tests.
fn reference_like(pattern: &str, escape: char, text: &str) -> bool {
    enum P {
        Char(char),
        One,
        Many,
    }
    let mut parsed = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        parsed.push(match c {
            c if c == escape => P::Char(chars.next().unwrap_or(c)),
            '%' => P::Many,
            '_' => P::One,
            c => P::Char(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // matched[j]: the pattern prefix so far matches text[..j].
    let mut matched = vec![false; text.len() + 1];
    matched[0] = true;
    for p in &parsed {
        let mut next = vec![false; text.len() + 1];
        for j in 0..=text.len() {
            next[j] = match p {
                P::Many => matched[j] || (j > 0 && next[j - 1]),
                P::One => j > 0 && matched[j - 1],
                P::Char(c) => j > 0 && matched[j - 1] && text[j - 1] == *c,
            };
        }
        matched = next;
    }
    matched[text.len()]
}
