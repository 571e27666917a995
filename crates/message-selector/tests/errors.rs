//! Malformed selectors are rejected with the column and what was expected.

use message_selector::{Selector, MAX_DEPTH, MAX_LENGTH};

fn error(src: &str) -> (usize, String) {
    match Selector::parse(src) {
        Ok(selector) => panic!("{src:?} parsed as {selector}"),
        Err(e) => {
            assert_eq!(e.to_string(), format!("column {}: {}", e.column, e.message));
            (e.column, e.message)
        }
    }
}

#[track_caller]
fn check(src: &str, column: usize, message: &str) {
    let (actual_column, actual_message) = error(src);
    assert_eq!(
        (actual_column, actual_message.as_str()),
        (column, message),
        "{src:?}"
    );
}

#[test]
fn expected_and_found() {
    check("(a = 1", 7, "expected ')' but found end of input");
    check(
        "a IN ('x', 'y'",
        15,
        "expected ',' or ')' but found end of input",
    );
    check(
        "a IN ()",
        7,
        "expected string or numeric literal but found ')'",
    );
    check(
        "a IN 'x'",
        6,
        "expected '(' after IN but found string literal 'x'",
    );
    check(
        "a IN ('x',)",
        11,
        "expected string or numeric literal but found ')'",
    );
    check(
        "a IN (b)",
        7,
        "expected string or numeric literal but found identifier 'b'",
    );
    check(
        "a IN (TRUE)",
        7,
        "expected string or numeric literal but found keyword TRUE",
    );
    check("a BETWEEN 1", 12, "expected AND but found end of input");
    check("a BETWEEN 1 OR 2", 13, "expected AND but found keyword OR");
    check("a = ", 5, "expected expression but found end of input");
    check("NOT", 4, "expected expression but found end of input");
    check("a AND", 6, "expected expression but found end of input");
    check(
        "a = 1 b",
        7,
        "expected an operator or end of input but found identifier 'b'",
    );
    check(
        "a = 1)",
        6,
        "expected end of input (unbalanced ')') but found ')'",
    );
    check("a == 1", 4, "expected expression but found '='");
    check(
        "a = b = c",
        7,
        "expected an operator or end of input but found '='",
    );
    check("()", 2, "expected expression but found ')'");
    check(
        "a NOT = 1",
        7,
        "expected BETWEEN, IN or LIKE after NOT but found '='",
    );
    check("a IS 1", 6, "expected NULL or NOT NULL but found number 1");
    check("a IS NOT 1", 10, "expected NULL but found number 1");
    check(
        "a LIKE b",
        8,
        "expected string literal pattern after LIKE but found identifier 'b'",
    );
    check(
        "a LIKE 'x' ESCAPE b",
        19,
        "expected string literal after ESCAPE but found identifier 'b'",
    );
    check(
        "a = NULL",
        5,
        "expected expression (NULL is only valid in IS [NOT] NULL) but found keyword NULL",
    );
}

#[test]
fn lexical_errors() {
    check("'unterminated", 1, "unterminated string literal");
    check("a = 'it''s", 5, "unterminated string literal");
    check(
        "a != 1",
        3,
        "unexpected '!=': the not-equal operator is '<>'",
    );
    check("a = #", 5, "unexpected character '#'");
    check("a = \"x\"", 5, "unexpected character '\"'");
    check("a = 1E", 5, "malformed exponent in numeric literal");
    check("a = 1E+", 5, "malformed exponent in numeric literal");
    check("a = 5abc", 5, "malformed numeric literal");
    check("a = 0x", 5, "malformed hexadecimal literal");
    check(
        "a = 09",
        5,
        "malformed octal literal (leading 0 means octal)",
    );
    check("a = 1E999", 5, "approximate numeric literal out of range");
    check(
        "a = 9223372036854775808",
        5,
        "exact numeric literal 9223372036854775808 is out of range for a 64-bit long",
    );
    check(
        "a = -9223372036854775809",
        6,
        "exact numeric literal -9223372036854775809 is out of range for a 64-bit long",
    );
    let (column, message) = error("a = 99999999999999999999999");
    assert_eq!(column, 5);
    assert!(
        message.starts_with("exact numeric literal out of range"),
        "{message}"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    check(
        "é = 'ü' AND",
        12,
        "expected expression but found end of input",
    );
    check("'日本語' = #", 9, "unexpected character '#'");
    check("a =\n\n#", 6, "unexpected character '#'");
}

#[test]
fn keywords_are_not_identifiers() {
    for kw in [
        "NOT", "AND", "OR", "BETWEEN", "LIKE", "IN", "IS", "NULL", "ESCAPE",
    ] {
        for spelling in [kw.to_owned(), kw.to_lowercase()] {
            let src = format!("{spelling} = 1");
            let (column, _) = error(&src);
            assert!(
                column == 1 || column == spelling.len() + 2,
                "{src:?}: column {column}"
            );
        }
    }
    // TRUE and FALSE are literals, never property names.
    let props: std::collections::HashMap<String, message_selector::OwnedValue> =
        [("TRUE".to_owned(), true.into())].into_iter().collect();
    let selector = Selector::parse("true = 1").expect("parses as a literal comparison");
    assert_eq!(selector.evaluate(&props), message_selector::Truth::Unknown);
    assert_eq!(selector.identifiers().count(), 0);
    check(
        "and = 1",
        1,
        "expected expression but found keyword AND (keywords cannot be used as identifiers)",
    );
    check(
        "a = escape",
        5,
        "expected expression but found keyword ESCAPE (keywords cannot be used as identifiers)",
    );
    check(
        "x = 1 OR between = 2",
        10,
        "expected expression but found keyword BETWEEN (keywords cannot be used as identifiers)",
    );
}

#[test]
fn like_escape_must_be_one_character() {
    check(
        "a LIKE 'x' ESCAPE 'ab'",
        19,
        "ESCAPE must be exactly one character, found 2",
    );
    check(
        "a LIKE 'x' ESCAPE ''",
        19,
        "ESCAPE must be exactly one character, found 0",
    );
    check(
        "a LIKE 'x!' ESCAPE '!'",
        8,
        "LIKE pattern ends with the escape character",
    );
    check(
        "a LIKE 'x' ESCAPE",
        18,
        "expected string literal after ESCAPE but found end of input",
    );
    assert!(Selector::parse("a LIKE 'x!!' ESCAPE '!'").is_ok());
    assert!(Selector::parse("a LIKE 'é' ESCAPE 'é'").is_err());
    assert!(Selector::parse("a LIKE 'éé' ESCAPE 'é'").is_ok());
}

#[test]
fn in_like_and_is_need_an_identifier_on_the_left() {
    check(
        "'a' IN ('a')",
        1,
        "the left operand of IN must be an identifier",
    );
    check(
        "1 + a LIKE 'x'",
        1,
        "the left operand of LIKE must be an identifier",
    );
    check(
        "x = 1 AND (a + 1) IS NULL",
        11,
        "the left operand of IS must be an identifier",
    );
    // A parenthesised identifier is still an identifier.
    assert!(Selector::parse("(a) IS NULL").is_ok());
    // BETWEEN takes any arithmetic expression.
    assert!(Selector::parse("1 + a BETWEEN 1 AND 2").is_ok());
}

#[test]
fn nesting_depth_is_limited() {
    let ok = format!(
        "{}a{}",
        "(".repeat(MAX_DEPTH - 1),
        ")".repeat(MAX_DEPTH - 1)
    );
    assert!(Selector::parse(&ok).is_ok());
    let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
    let (column, message) = error(&deep);
    assert_eq!(column, MAX_DEPTH + 1);
    assert_eq!(
        message,
        format!("expression nested more than {MAX_DEPTH} levels deep")
    );

    let nots = format!("{}a", "NOT ".repeat(10_000));
    assert!(error(&nots).1.contains("nested more than"));
    let minus = format!("{}a", "- ".repeat(10_000));
    assert!(error(&minus).1.contains("nested more than"));
    // Long flat chains build deep trees too; they are bounded the same way.
    let chain = vec!["a = 1"; 5_000].join(" AND ");
    assert!(error(&chain).1.contains("nested more than"));
    let sum = format!("a = {}", vec!["1"; 5_000].join(" + "));
    assert!(error(&sum).1.contains("nested more than"));
    let short_chain = vec!["a = 1"; 100].join(" OR ");
    assert!(Selector::parse(&short_chain).is_ok());
}

#[test]
fn length_is_limited() {
    let long = format!("a = '{}'", "x".repeat(MAX_LENGTH));
    let (column, message) = error(&long);
    assert_eq!(column, MAX_LENGTH + 1);
    assert_eq!(
        message,
        format!("selector is longer than {MAX_LENGTH} bytes")
    );
    let fits = format!("a = '{}'", "x".repeat(MAX_LENGTH - 6));
    assert!(Selector::parse(&fits).is_ok());
}

#[test]
fn from_str_reports_the_same_error() {
    let err = "a BETWEEN 1"
        .parse::<message_selector::Selector>()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "column 12: expected AND but found end of input"
    );
}
