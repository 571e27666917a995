//! Date-times given as text, read in one place: the events API's `date` and `date_to`, the
//! event times of producer messages (ESOZ, RCP v2, FHIRcast) and `replay --to-time`.
//!
//! One scanner reads RFC 3339 (`2017-04-20T19:14:13Z`, `…+02:00`) for all three. Each reader
//! accepts some neighbours of it besides, exactly those it accepted before they shared this
//! module (the tests compare each with its former implementation):
//! - [`parse_query_time`], the API: also a date alone, a time without seconds and a time
//!   without zone (UTC), and a space for a `+` that the query string decoded; but no leap second
//!   and at most nine fraction digits: what the OpenAPI document's `DATE_PATTERN` publishes.
//! - [`parse_event_time`], producers: also a date-time without zone, meaning UTC (Elixir's
//!   `NaiveDateTime`), as chrono's `%Y-%m-%dT%H:%M:%S%.f` and `%Y-%m-%d %H:%M:%S%.f` read it.
//! - [`parse_time_or_date`], the command line: also a date alone (`%Y-%m-%d` as chrono reads
//!   it), meaning midnight UTC.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// Which forms around RFC 3339's the scanner accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// RFC 3339 as chrono's `parse_from_rfc3339` reads it: `T`, `t` or a space between date and
    /// time, a leap second (`:60`), any number of fraction digits (the tenth on ignored), and
    /// U+2212 as well as `-` before an offset.
    Rfc3339,
    /// The events API's `date` and `date_to` (see the module's documentation).
    Query,
}

/// An RFC 3339 date-time as chrono's `DateTime::parse_from_rfc3339` reads it, in UTC.
pub(crate) fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    scan(s, Dialect::Rfc3339)
}

/// The events API's `date` and `date_to`: a date (`2017-04-20`, midnight UTC), optionally a
/// time (`T`, `t` or a space; `HH:MM`, optional `:SS` and 1 to 9 fraction digits) and a zone
/// (`Z`, `z` or `±HH:MM`, a space standing for `+`); without a zone the time is UTC.
pub(crate) fn parse_query_time(s: &str) -> Option<DateTime<Utc>> {
    scan(s, Dialect::Query)
}

/// An event time of a producer message: RFC 3339, or a date-time without zone meaning UTC.
pub(crate) fn parse_event_time(s: &str) -> Option<DateTime<Utc>> {
    parse_rfc3339(s).or_else(|| {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
            .ok()
            .map(|n| n.and_utc())
    })
}

/// A time given on the command line: RFC 3339, or a date (`YYYY-MM-DD`) meaning midnight UTC.
pub fn parse_time_or_date(s: &str) -> Option<DateTime<Utc>> {
    parse_rfc3339(s).or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(|d| d.and_time(NaiveTime::MIN).and_utc())
    })
}

/// Reads `YYYY-MM-DD[Tt ]HH:MM:SS[.f](Z|z|±HH:MM)` and what `dialect` adds to it, byte by
/// byte: the usual form costs a sixth of chrono's general parser.
fn scan(s: &str, dialect: Dialect) -> Option<DateTime<Utc>> {
    let query = dialect == Dialect::Query;
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i32::try_from(number(&b[0..4])?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number(&b[5..7])?, number(&b[8..10])?)?;
    let rest = match &b[10..] {
        [] if query => return Some(date.and_time(NaiveTime::MIN).and_utc()),
        [b'T' | b't' | b' ', rest @ ..] => rest,
        _ => return None,
    };
    let (hour, minute, mut rest) = match rest {
        [h1, h2, b':', m1, m2, rest @ ..] => (number(&[*h1, *h2])?, number(&[*m1, *m2])?, rest),
        _ => return None,
    };
    let (mut second, mut nano) = (0, 0);
    match rest {
        [b':', s1, s2, after @ ..] => {
            second = number(&[*s1, *s2])?;
            rest = after;
            if let [b'.', fraction @ ..] = rest {
                let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
                if digits == 0 || (query && digits > 9) {
                    return None;
                }
                let kept = &fraction[..digits.min(9)];
                nano = number(kept)? * 10_u32.pow(9 - kept.len() as u32);
                rest = &fraction[digits..];
            }
        }
        _ if query => {}
        _ => return None,
    }
    if second == 60 && !query {
        // chrono's leap second: second 59 and a nanosecond of 1 000 000 000 or more.
        second = 59;
        nano += 1_000_000_000;
    }
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nano)?;
    let offset_seconds = match rest {
        [] if query => 0,
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-' | b' '), zone @ ..] if *sign != b' ' || query => {
            offset(zone, *sign == b'-')?
        }
        // U+2212 MINUS SIGN.
        [0xE2, 0x88, 0x92, zone @ ..] if !query => offset(zone, true)?,
        _ => return None,
    };
    let offset = FixedOffset::east_opt(offset_seconds)?;
    date.and_time(time)
        .and_local_timezone(offset)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// `HH:MM` of an offset, 00:00 to 23:59, in seconds.
fn offset(zone: &[u8], negative: bool) -> Option<i32> {
    let [h1, h2, b':', m1, m2] = zone else {
        return None;
    };
    let (hours, minutes) = (number(&[*h1, *h2])?, number(&[*m1, *m2])?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    let seconds = i32::try_from(hours * 3600 + minutes * 60).ok()?;
    Some(if negative { -seconds } else { seconds })
}

/// ASCII digits as a number (at most nine of them, so it fits).
fn number(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0_u32, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// How the events API read dates before this module: its published pattern, then chrono.
    fn former_query_time(s: &str) -> Option<DateTime<Utc>> {
        const DATE_PATTERN: &str = concat!(
            "^(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])",
            "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))",
            "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)",
            "(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,9})?)?",
            "(?:[Zz]|[+ -](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?$",
        );
        static DATE_REGEX: std::sync::LazyLock<regex::Regex> =
            std::sync::LazyLock::new(|| regex::Regex::new(DATE_PATTERN).unwrap());
        if !DATE_REGEX.is_match(s) {
            return None;
        }
        let (date, time) = s.split_at_checked(10)?;
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        let Some(time) = time.get(1..) else {
            return date.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        };
        let (clock, zone) = match time.find(['Z', 'z', '+', '-', ' ']) {
            Some(at) => time.split_at(at),
            None => (time, ""),
        };
        let format = if clock.len() == 5 {
            "%H:%M"
        } else {
            "%H:%M:%S%.f"
        };
        let local = date.and_time(NaiveTime::parse_from_str(clock, format).ok()?);
        let offset_seconds = match zone.as_bytes() {
            [] | [b'Z' | b'z'] => 0,
            [sign, h1, h2, b':', m1, m2] => {
                let digit = |b: &u8| i32::from(b - b'0');
                let magnitude =
                    (digit(h1) * 10 + digit(h2)) * 3600 + (digit(m1) * 10 + digit(m2)) * 60;
                if *sign == b'-' {
                    -magnitude
                } else {
                    magnitude
                }
            }
            _ => return None,
        };
        local
            .and_local_timezone(FixedOffset::east_opt(offset_seconds)?)
            .single()
            .map(|t| t.with_timezone(&Utc))
    }

    /// How producers' event times were read before this module.
    fn former_event_time(s: &str) -> Option<DateTime<Utc>> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(t.with_timezone(&Utc));
        }
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
            .ok()
            .map(|n| n.and_utc())
    }

    /// How `replay --to-time` was read before this module.
    fn former_time_or_date(s: &str) -> Option<DateTime<Utc>> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(t.with_timezone(&Utc));
        }
        let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        Some(date.and_time(NaiveTime::MIN).and_utc())
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Strings near every reader's grammar: each part well-formed or a little off.
    fn near_grammar() -> impl Strategy<Value = String> {
        (
            "[0-9]{4}-[0-1][0-9]-[0-3][0-9]|[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}| ?[+-]?[0-9]{4}-[0-9]{2}-[0-9]{2}",
            "([Tt ][0-2][0-9]:[0-6][0-9](:[0-6][0-9](\\.[0-9]{0,12})?)?)?",
            "([Zz]|[+ \u{2212}-][0-2][0-9]:[0-6][0-9]|[+-][0-9]{1,4}|UTC| )?",
        )
            .prop_map(|(date, time, zone)| format!("{date}{time}{zone}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn each_reader_accepts_what_it_accepted_before(s in near_grammar()) {
            prop_assert_eq!(parse_query_time(&s), former_query_time(&s), "query {:?}", s);
            prop_assert_eq!(parse_event_time(&s), former_event_time(&s), "event {:?}", s);
            prop_assert_eq!(parse_time_or_date(&s), former_time_or_date(&s), "cli {:?}", s);
            prop_assert_eq!(
                parse_rfc3339(&s),
                DateTime::parse_from_rfc3339(&s).ok().map(|t| t.with_timezone(&Utc)),
                "rfc3339 {:?}", s
            );
        }

        #[test]
        fn any_text_reads_as_before(s in "\\PC{0,30}") {
            prop_assert_eq!(parse_query_time(&s), former_query_time(&s), "query {:?}", s);
            prop_assert_eq!(parse_event_time(&s), former_event_time(&s), "event {:?}", s);
            prop_assert_eq!(parse_time_or_date(&s), former_time_or_date(&s), "cli {:?}", s);
        }

        #[test]
        fn every_instant_reads_back(
            // A day inside years 1 to 9999, so that every offset keeps four digits.
            secs in -62_135_510_400_i64..253_402_214_400,
            nanos in 0_u32..1_000_000_000,
            offset_minutes in -1439_i32..1440,
        ) {
            let utc = DateTime::<Utc>::from_timestamp(secs, nanos).unwrap();
            let local = utc.with_timezone(&FixedOffset::east_opt(offset_minutes * 60).unwrap());
            let text = local.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            prop_assert_eq!(parse_rfc3339(&text), Some(utc), "{}", text);
            prop_assert_eq!(parse_query_time(&text), Some(utc), "{}", text);
            prop_assert_eq!(parse_event_time(&text), Some(utc), "{}", text);
            prop_assert_eq!(parse_time_or_date(&text), Some(utc), "{}", text);
        }
    }

    /// What `read` must make of each text: the instant (as RFC 3339), or nothing.
    fn check(read: fn(&str) -> Option<DateTime<Utc>>, cases: &[(&str, Option<&str>)]) {
        for (text, instant) in cases {
            assert_eq!(read(text), instant.map(t), "{text:?}");
        }
    }

    const AT: Option<&str> = Some("2017-04-20T19:14:13Z");

    #[test]
    fn query_times() {
        check(
            parse_query_time,
            &[
                ("2017-04-20T19:14:13Z", AT),
                ("2017-04-20T21:14:13+02:00", AT),
                ("2017-04-20T21:14:13 02:00", AT),
                ("2017-04-20t19:14:13z", AT),
                ("2017-04-20T19:14:13", AT),
                ("2017-04-20 19:14:13", AT),
                ("2017-04-20T19:14:13.000", AT),
                ("2017-04-20", Some("2017-04-20T00:00:00Z")),
                ("2017-04-20T21:14+02:00", Some("2017-04-20T19:14:00Z")),
                (
                    "2017-04-20 19:14:13.123456789-00:30",
                    Some("2017-04-20T19:44:13.123456789Z"),
                ),
                ("2024-02-29", Some("2024-02-29T00:00:00Z")),
                ("2000-02-29", Some("2000-02-29T00:00:00Z")),
                ("2017-13-01", None),
                ("yesterday", None),
                ("2017-04-20T25:00:00Z", None),
                ("1492715653", None),
                ("'; DROP TABLE events; --", None),
                ("2017-4-20", None),
                ("+2017-04-20", None),
                ("12017-04-20", None),
                ("2017-04-31", None),
                ("2023-02-29", None),
                ("1900-02-29", None),
                ("2017-04-20T19:14:60Z", None),
                ("2017-04-20T19:14:13.Z", None),
                ("2017-04-20T19:14:13.1234567890Z", None),
                ("2017-04-20T19:14:13+24:00", None),
                ("2017-04-20T19:14:13\u{2212}02:00", None),
                ("2017-04-20T19", None),
                ("2017-04-20T", None),
                ("2017-04-20\n", None),
                (" 2017-04-20", None),
                ("２０１７-04-20", None),
            ],
        );
    }

    #[test]
    fn event_times() {
        check(
            parse_event_time,
            &[
                ("2017-04-20T19:14:13Z", AT),
                ("2017-04-20t19:14:13z", AT),
                ("2017-04-20 19:14:13Z", AT),
                ("2017-04-20T21:14:13+02:00", AT),
                ("2017-04-20T17:14:13\u{2212}02:00", AT),
                ("2017-04-20T19:14:13.0000000000Z", AT),
                ("2017-04-20T19:14:13", AT),
                ("2017-04-20 19:14:13", AT),
                (
                    "2020-01-02T03:04:05.123456",
                    Some("2020-01-02T03:04:05.123456Z"),
                ),
                // A leap second, as chrono keeps it.
                ("2016-12-31T23:59:60.5Z", Some("2016-12-31T23:59:60.5Z")),
                ("yesterday", None),
                ("2017-04-20", None),
                ("2017-04-20T19:14Z", None),
                ("2017-04-20T19:14:13 02:00", None),
                ("2017-04-20T19:14:13+24:00", None),
                ("2017-04-20T19:14:13.Z", None),
                ("2017-04-31T19:14:13Z", None),
            ],
        );
    }

    #[test]
    fn command_line_times() {
        check(
            parse_time_or_date,
            &[
                ("2017-04-20T21:14:13+02:00", AT),
                ("2017-04-20", Some("2017-04-20T00:00:00Z")),
                ("2017-04-20T19:14:13", None),
                ("2017-04-20T19:14Z", None),
                ("yesterday", None),
                ("", None),
            ],
        );
    }
}
