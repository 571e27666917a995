//! LIKE pattern edge cases: escapes, `_` over multibyte characters, `%` runs, and
//! patterns that make backtracking matchers explode.

use std::collections::HashMap;

use message_selector::{OwnedValue, Selector, Truth};

fn like(value: &str, pattern_clause: &str) -> Truth {
    let selector = Selector::parse(&format!("v {pattern_clause}"))
        .unwrap_or_else(|e| panic!("{pattern_clause:?}: {e}"));
    let mut props = HashMap::new();
    props.insert("v".to_owned(), OwnedValue::from(value));
    selector.evaluate(&props)
}

#[track_caller]
fn yes(value: &str, pattern: &str) {
    assert_eq!(like(value, pattern), Truth::True, "{value:?} {pattern}");
}

#[track_caller]
fn no(value: &str, pattern: &str) {
    assert_eq!(like(value, pattern), Truth::False, "{value:?} {pattern}");
}

#[test]
fn matches_the_whole_string() {
    yes("abc", "LIKE 'abc'");
    no("abcd", "LIKE 'abc'");
    no("zabc", "LIKE 'abc'");
    no("abc", "LIKE 'b'");
    yes("abc", "LIKE '%b%'");
    yes("", "LIKE ''");
    no("a", "LIKE ''");
}

#[test]
fn jms_spec_examples() {
    // JMS 2.0 §3.8.1.1.
    yes("12%3", "LIKE '12%3'");
    yes("123", "LIKE '12%3'");
    yes("12993", "LIKE '12%3'");
    no("1234", "LIKE '12%3'");
    yes("lose", "LIKE 'l_se'");
    no("loose", "LIKE 'l_se'");
    yes("_foo", "LIKE '\\_%' ESCAPE '\\'");
    no("bar", "LIKE '\\_%' ESCAPE '\\'");
    no("123", "NOT LIKE '12%3'");
    yes("1234", "NOT LIKE '12%3'");
}

#[test]
fn escapes() {
    yes("100%", "LIKE '100!%' ESCAPE '!'");
    no("1000", "LIKE '100!%' ESCAPE '!'");
    yes("a_b", "LIKE 'a!_b' ESCAPE '!'");
    no("axb", "LIKE 'a!_b' ESCAPE '!'");
    yes("a!b", "LIKE 'a!!b' ESCAPE '!'");
    yes("ab", "LIKE 'a!b' ESCAPE '!'");
    yes("50% off", "LIKE '%!%%' ESCAPE '!'");
    no("50 off", "LIKE '%!%%' ESCAPE '!'");
    yes("it's", "LIKE 'it''s'");
    yes("it's", "LIKE 'it_s'");
    yes("a'b", "LIKE 'a''''b' ESCAPE ''''");
    // Without ESCAPE a backslash is an ordinary character.
    yes("a\\b", "LIKE 'a\\b'");
    yes("a\\xb", "LIKE 'a\\_b'");
    // A multibyte escape character.
    yes("a%", "LIKE 'aé%' ESCAPE 'é'");
    no("ab", "LIKE 'aé%' ESCAPE 'é'");
}

#[test]
fn underscore_is_one_character_not_one_byte() {
    yes("é", "LIKE '_'");
    no("é", "LIKE '__'");
    yes("日本語", "LIKE '___'");
    yes("日本語", "LIKE '日_語'");
    yes("a😀b", "LIKE 'a_b'");
    yes("😀", "LIKE '%_'");
    no("", "LIKE '%_'");
    yes("xé", "LIKE '%é'");
    yes("éa", "LIKE '_a%'");
    yes("aéb", "LIKE '%_b'");
    yes("abcé", "LIKE '%c_'");
    yes("abcéd", "LIKE '%c_d%'");
    no("abcd", "LIKE '%c__d%'");
}

#[test]
fn percent_runs_and_mixed_wildcards() {
    yes("", "LIKE '%%%'");
    yes("abc", "LIKE '%%%'");
    yes("abc", "LIKE 'a%%c'");
    yes("ac", "LIKE 'a%%c'");
    yes("abc", "LIKE '%_%'");
    no("", "LIKE '%_%'");
    yes("ab", "LIKE '%_%_%'");
    no("a", "LIKE '%_%_%'");
    yes("xaybzc", "LIKE '%a%b%c'");
    no("xaybzcd", "LIKE '%a%b%c'");
    yes("abab", "LIKE '%ab%ab'");
    no("aba", "LIKE '%ab%ab'");
    yes("aaa", "LIKE 'a%a'");
    yes("aa", "LIKE 'a%a'");
    no("a", "LIKE 'a%a'");
    yes("abcabc", "LIKE '%bc%bc'");
    yes(
        "https://x.org/fhir/CarePlan/1",
        "LIKE 'https://%/CarePlan/%'",
    );
    no(
        "https://x.org/fhir/Patient/1",
        "LIKE 'https://%/CarePlan/%'",
    );
    yes("aXbXXc", "LIKE 'a_b__c'");
    yes("mississippi", "LIKE '%s_s%i'");
    yes("mississippi", "LIKE 'm%iss%ppi'");
    no("mississippi", "LIKE 'm%iss%pppi'");
    yes("abcde", "LIKE '%b_d%'");
    yes("ab_d", "LIKE '%b_d'");
}

#[test]
fn pathological_patterns_finish() {
    let many_a = "a".repeat(20_000);
    no(&many_a, "LIKE '%a%a%a%a%b'");
    no(&many_a, "LIKE '%a%a%a%a%a%a%a%a%a%a%a%a%b%'");
    yes(&format!("{many_a}b"), "LIKE '%a%a%a%a%b'");
    no(&many_a, "LIKE '%_a_a_a_a_b%'");
    no(&many_a, "LIKE '%aaaaaaaaab%'");
    yes(&many_a, "LIKE '%a_a_a%'");
    let pattern = format!("LIKE '{}b'", "%a".repeat(200));
    no(&many_a, &pattern);
    let multibyte = "é".repeat(20_000);
    no(&multibyte, "LIKE '%é%é%é%é%_x'");
}

#[test]
fn non_strings_and_null() {
    let selector = Selector::parse("v LIKE '5'").expect("parses");
    let mut props = HashMap::new();
    assert_eq!(selector.evaluate(&props), Truth::Unknown);
    props.insert("v".to_owned(), OwnedValue::Long(5));
    assert_eq!(selector.evaluate(&props), Truth::Unknown);
    props.insert("v".to_owned(), OwnedValue::Boolean(true));
    assert_eq!(selector.evaluate(&props), Truth::Unknown);
}

#[test]
fn long_patterns_compile_and_match() {
    let literal = "x".repeat(60_000);
    assert_eq!(like(&literal, &format!("LIKE '{literal}'")), Truth::True);
    assert_eq!(
        like(&literal, &format!("LIKE '%{}_'", &literal[1..])),
        Truth::True
    );
    let underscores = "_".repeat(30_000);
    assert_eq!(
        like(&literal, &format!("LIKE '%{underscores}%'")),
        Truth::True
    );
}
