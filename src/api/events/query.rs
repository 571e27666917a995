//! The query string of `GET /api/events`, parsed and validated into the store's typed
//! [`EventsQuery`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::api::config::ApiConfig;
use crate::api::error::{ApiError, InvalidParameter};
use crate::store::event_queries::{AttributeFilter, EventsQuery};

/// Largest page number accepted.
pub(crate) const MAX_PAGE: u32 = 1_000_000;
/// Longest text filter value accepted, in characters.
pub(crate) const MAX_TEXT_LEN: usize = 256;

/// `date` and `date_to`: a calendar date (`YYYY-MM-DD`, only days that exist), optionally a time
/// (`T`, `t` or a space, `HH:MM`, optional `:SS` and 1–9 fraction digits) and a zone (`Z`, `z`
/// or `±HH:MM`, where a space stands for a `+` that arrived unencoded). Without a zone the time
/// is UTC; without a time it is midnight UTC. The OpenAPI document publishes this pattern, so
/// that clients and fuzzers generate exactly the dates the server accepts.
pub const DATE_PATTERN: &str = concat!(
    "^(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])",
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
    "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)",
    "(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,9})?)?",
    "(?:[Zz]|[+ -](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?$",
);

/// Text filters (`event_type`, `entity_type`, `attribute_name`, `new_value`): no control
/// characters (Unicode category Cc), as published in the OpenAPI document; length is bounded
/// separately (1 to [`MAX_TEXT_LEN`] characters).
pub(crate) const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// ESOZ's message for a period that is too long (docs/architecture.md, "ESOZ Event Manager").
pub(crate) fn period_message(hours: u32) -> String {
    format!(
        "Period must be less than or equal to {hours} hours. Please set allowed period to the query"
    )
}

const PARAMETERS: &[&str] = &[
    "date",
    "date_to",
    "event_type",
    "entity_type",
    "attribute_name",
    "new_value",
    "page",
    "page_size",
];

/// Parses and validates the query string of `GET /api/events`, collecting every problem.
pub fn parse_query(
    raw: Option<&str>,
    now: DateTime<Utc>,
    config: &ApiConfig,
) -> Result<EventsQuery, ApiError> {
    let mut invalid = Vec::new();
    let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
    for (key, value) in query_pairs(raw.unwrap_or_default()) {
        let Some(name) = PARAMETERS.iter().copied().find(|p| *p == key) else {
            invalid.push(InvalidParameter::new(
                truncate(&key),
                "unknown parameter (known: date, date_to, event_type, entity_type, \
                 attribute_name, new_value, page, page_size)",
            ));
            continue;
        };
        if values.contains_key(name) {
            invalid.push(InvalidParameter::new(name, "given more than once"));
            continue;
        }
        let Some(value) = value else {
            invalid.push(InvalidParameter::new(
                name,
                "must be UTF-8 (the percent-encoded bytes are not)",
            ));
            values.insert(name, String::new());
            continue;
        };
        if value.is_empty() {
            invalid.push(InvalidParameter::new(name, "must not be empty"));
        } else if value.chars().any(char::is_control) {
            invalid.push(InvalidParameter::new(
                name,
                "must not contain control characters",
            ));
        } else if value.chars().count() > MAX_TEXT_LEN {
            invalid.push(InvalidParameter::new(
                name,
                format!("must be at most {MAX_TEXT_LEN} characters"),
            ));
        }
        values.insert(name, value);
    }
    let failed: std::collections::BTreeSet<String> =
        invalid.iter().map(|p| p.parameter.clone()).collect();
    let get = |name: &str| {
        values
            .get(name)
            .filter(|_| !failed.contains(name))
            .map(String::as_str)
    };

    let mut date = |name: &'static str| {
        get(name).and_then(|v| {
            let parsed = crate::time::parse_query_time(v);
            if parsed.is_none() {
                invalid.push(InvalidParameter::new(
                    name,
                    "must be an RFC 3339 date-time (2017-04-20T19:14:13Z), a UTC date-time \
                     without zone (2017-04-20T19:14:13) or a date (2017-04-20)",
                ));
            }
            parsed
        })
    };
    let date_from = date("date");
    let date_to = date("date_to");

    let mut number = |name: &'static str, max: u32, default: u32| match get(name) {
        None => Some(default),
        Some(v) => match parse_count(v) {
            Some(n) if n <= max => Some(n),
            _ => {
                invalid.push(InvalidParameter::new(
                    name,
                    format!("must be an integer between 1 and {max}"),
                ));
                None
            }
        },
    };
    let page = number("page", MAX_PAGE, 1);
    let page_size = number("page_size", config.max_page_size, config.default_page_size);

    let attribute = match (get("attribute_name"), get("new_value")) {
        (Some(name), None) => Some(AttributeFilter::Exists(name.to_owned())),
        (Some(name), Some(value)) => Some(AttributeFilter::NewValue {
            name: name.to_owned(),
            value: value.to_owned(),
        }),
        (None, Some(_)) if !failed.contains("attribute_name") => {
            invalid.push(InvalidParameter::new(
                "new_value",
                "requires attribute_name",
            ));
            None
        }
        (None, _) => None,
    };

    let period = config.max_period();
    let window = match (
        values.contains_key("date"),
        date_from,
        values.contains_key("date_to"),
        date_to,
    ) {
        (_, Some(from), _, Some(to)) => {
            if from > to {
                invalid.push(InvalidParameter::new("date", "must not be after date_to"));
                None
            } else if to - from > period {
                if invalid.is_empty() {
                    return Err(ApiError::Validation {
                        message: period_message(config.events_list_max_period_hours),
                        invalid: vec![
                            InvalidParameter::new("date", "period"),
                            InvalidParameter::new("date_to", "period"),
                        ],
                    });
                }
                None
            } else {
                Some((from, to))
            }
        }
        (_, Some(from), false, None) => {
            shift(from, period, "date", &mut invalid).map(|to| (from, to))
        }
        (false, None, _, Some(to)) => {
            shift(to, -period, "date_to", &mut invalid).map(|from| (from, to))
        }
        (false, None, false, None) => Some((now - period, now)),
        _ => None, // a given date failed to parse and is already reported
    };

    match (window, page, page_size) {
        (Some((from, to)), Some(page), Some(page_size)) if invalid.is_empty() => Ok(EventsQuery {
            from,
            to,
            event_type: get("event_type").map(str::to_owned),
            entity_type: get("entity_type").map(str::to_owned),
            attribute_indexed: attribute.as_ref().is_some_and(|a| match a {
                AttributeFilter::Exists(name) => config.is_indexed(name),
                AttributeFilter::NewValue { name, .. } => config.is_value_indexed(name),
            }),
            attribute,
            page,
            page_size,
            now,
        }),
        _ => {
            let names: Vec<&str> = invalid.iter().map(|p| p.parameter.as_str()).collect();
            Err(ApiError::Validation {
                message: format!("invalid query parameters: {}", names.join(", ")),
                invalid,
            })
        }
    }
}

/// The `name=value` pairs of a query string (`application/x-www-form-urlencoded`: `+` is a
/// space, `%XX` a byte). A value whose bytes are not UTF-8 is `None`: replacing them with U+FFFD
/// would answer a different question than the one asked. Names are only compared, so lossy.
fn query_pairs(raw: &str) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    fn decode(s: &str) -> Vec<u8> {
        percent_encoding::percent_decode(s.replace('+', " ").as_bytes()).collect()
    }
    raw.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (
            String::from_utf8_lossy(&decode(name)).into_owned(),
            String::from_utf8(decode(value)).ok(),
        )
    })
}

fn shift(
    at: DateTime<Utc>,
    by: chrono::Duration,
    name: &str,
    invalid: &mut Vec<InvalidParameter>,
) -> Option<DateTime<Utc>> {
    let shifted = at.checked_add_signed(by);
    if shifted.is_none() {
        invalid.push(InvalidParameter::new(name, "out of range"));
    }
    shifted
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A page number or size: decimal digits without sign or leading zero, at least 1.
fn parse_count(s: &str) -> Option<u32> {
    let plain = s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
    s.parse().ok().filter(|_| plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    fn parse(q: &str) -> Result<EventsQuery, ApiError> {
        parse_query(Some(q), now(), &ApiConfig::default())
    }

    fn invalid_params(q: &str) -> Vec<String> {
        match parse(q) {
            Err(ApiError::Validation { invalid, .. }) => {
                invalid.into_iter().map(|p| p.parameter).collect()
            }
            other => panic!("{q}: expected a validation error, got {other:?}"),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        crate::time::parse_query_time(s).unwrap()
    }

    static DATE_REGEX: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(DATE_PATTERN).unwrap());

    #[test]
    fn no_dates_is_the_last_period() {
        let q = parse_query(None, now(), &ApiConfig::default()).unwrap();
        assert_eq!((q.from, q.to), (now() - chrono::Duration::hours(1), now()));
        assert_eq!((q.page, q.page_size), (1, 50));
        assert_eq!(q.attribute, None);
    }

    #[test]
    fn one_date_is_one_period_from_or_to_it() {
        let q = parse("date=2024-01-01T10:00:00Z").unwrap();
        assert_eq!(
            (q.from, q.to),
            (t("2024-01-01T10:00:00Z"), t("2024-01-01T11:00:00Z"))
        );
        let q = parse("date_to=2024-01-01T10:00:00Z").unwrap();
        assert_eq!(
            (q.from, q.to),
            (t("2024-01-01T09:00:00Z"), t("2024-01-01T10:00:00Z"))
        );
        let config = ApiConfig {
            events_list_max_period_hours: 24,
            ..ApiConfig::default()
        };
        let q = parse_query(Some("date=2024-01-01"), now(), &config).unwrap();
        assert_eq!(
            (q.from, q.to),
            (t("2024-01-01T00:00:00Z"), t("2024-01-02T00:00:00Z"))
        );
    }

    #[test]
    fn both_dates_within_the_period() {
        let q = parse("date=2024-01-01T10:00:00Z&date_to=2024-01-01T11:00:00Z").unwrap();
        assert_eq!(q.to - q.from, chrono::Duration::hours(1));
        match parse("date=2024-01-01T10:00:00Z&date_to=2024-01-01T11:00:01Z") {
            Err(ApiError::Validation { message, invalid }) => {
                assert_eq!(
                    message,
                    "Period must be less than or equal to 1 hours. Please set allowed period to the query"
                );
                assert_eq!(invalid.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            invalid_params("date=2024-01-01T11:00:00Z&date_to=2024-01-01T10:00:00Z"),
            ["date"]
        );
    }

    #[test]
    fn an_encoded_plus_survives_the_query_string_decoding() {
        let q = parse("date=2017-04-20T21%3A14%3A13%2B02%3A00").unwrap();
        assert_eq!(q.from, t("2017-04-20T19:14:13Z"));
    }

    proptest! {
        /// Every date the published pattern admits is one the server reads, and the server
        /// reads no other: the OpenAPI document and the parser cannot drift apart.
        #[test]
        fn the_date_pattern_is_what_the_parser_accepts(
            s in "[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,10})?)?([Zz]|[+ -][0-9]{2}:[0-9]{2})?)?"
        ) {
            prop_assert_eq!(DATE_REGEX.is_match(&s), crate::time::parse_query_time(&s).is_some(), "{}", s);
        }
    }

    #[test]
    fn the_date_pattern_admits_exactly_the_calendar_days() {
        for year in [
            0, 4, 100, 400, 1900, 1996, 2000, 2023, 2024, 2100, 9996, 9999,
        ] {
            for month in 0..=13 {
                for day in 0..=32 {
                    let s = format!("{year:04}-{month:02}-{day:02}");
                    let real = NaiveDate::from_ymd_opt(year, month, day).is_some();
                    assert_eq!(DATE_REGEX.is_match(&s), real, "{s}");
                    assert_eq!(crate::time::parse_query_time(&s).is_some(), real, "{s}");
                }
            }
        }
    }

    #[test]
    fn the_text_pattern_is_the_control_character_rule() {
        let pattern = regex::Regex::new(TEXT_PATTERN).unwrap();
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(
                pattern.is_match(c.encode_utf8(&mut [0; 4])),
                !c.is_control(),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn attribute_filters() {
        assert_eq!(
            parse("attribute_name=status").unwrap().attribute,
            Some(AttributeFilter::Exists("status".into()))
        );
        assert_eq!(
            parse("attribute_name=status&new_value=APPROVED")
                .unwrap()
                .attribute,
            Some(AttributeFilter::NewValue {
                name: "status".into(),
                value: "APPROVED".into()
            })
        );
        assert_eq!(invalid_params("new_value=APPROVED"), ["new_value"]);
    }

    #[test]
    fn paging_bounds() {
        let q = parse("page=3&page_size=500").unwrap();
        assert_eq!((q.page, q.page_size), (3, 500));
        for bad in [
            "page=0",
            "page=-1",
            "page=x",
            "page=1.5",
            "page=99999999999",
            "page=1000001",
        ] {
            assert_eq!(invalid_params(bad), ["page"], "{bad}");
        }
        for bad in ["page=%2B3", "page=03", "page=3%20", "page=%203", "page=3e0"] {
            assert_eq!(invalid_params(bad), ["page"], "{bad}");
        }
        for bad in ["page_size=0", "page_size=501", "page_size=ten"] {
            assert_eq!(invalid_params(bad), ["page_size"], "{bad}");
        }
    }

    #[test]
    fn unknown_repeated_empty_and_control_values_are_rejected() {
        assert_eq!(invalid_params("event-type=x"), ["event-type"]);
        assert_eq!(invalid_params("page=1&page=2"), ["page"]);
        assert_eq!(invalid_params("event_type="), ["event_type"]);
        assert_eq!(invalid_params("event_type=a%00b"), ["event_type"]);
        let long = "x".repeat(MAX_TEXT_LEN + 1);
        assert_eq!(
            invalid_params(&format!("entity_type={long}")),
            ["entity_type"]
        );
        // Percent-encoded bytes must be UTF-8; they are never replaced by U+FFFD.
        for bad in [
            "%ff%fe",
            "%c0%80",
            "%ed%a0%80",
            "a%80",
            "%f4%90%80%80",
            "%e2%82",
        ] {
            assert_eq!(
                invalid_params(&format!("event_type={bad}")),
                ["event_type"],
                "{bad}"
            );
        }
        assert_eq!(
            parse("event_type=%C3%BC%EF%BF%BD+x")
                .unwrap()
                .event_type
                .as_deref(),
            Some("ü\u{fffd} x")
        );
        // Every problem is reported at once.
        assert_eq!(
            invalid_params("page=0&page_size=0&date=nope&new_value=x"),
            ["date", "page", "page_size", "new_value"]
        );
    }
}
