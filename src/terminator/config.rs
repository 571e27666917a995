//! The `[terminator]` configuration section (retention of the EventDB as ESOZ defines it,
//! docs/architecture.md "ESOZ Event Manager"). Defaults:
//!
//! ```toml
//! [terminator]
//! enabled = true              # schedule the job in `run`; `terminate` runs regardless
//! schedule = "0 0 3 * * *"    # sec min hour day-of-month month day-of-week [year], in UTC
//! event_max_time = "1month"   # age rule on insertion time, as the UUID v7 id records it (humantime: "30d", "1month", "12h")
//! event_max_number = 50000    # count rule: keep the newest N in insertion order (by id)
//! batch_size = 10000          # rows per DELETE statement (each its own short transaction)
//! batch_pause = "20ms"        # rest between two batches, leaving the database to ingestion
//! state_horizon = "0"         # prune entity_state of entities untouched this long
//! lock_key = 4996273493324417358  # pg advisory lock key all replicas contend for ("EVTERMIN")
//! ```
//!
//! **Disabling a rule:** `event_max_time`, `event_max_number` and `state_horizon` are each
//! turned off by `0` or an empty string (`""`, or an empty `EM_TERMINATOR__…` variable);
//! `state_horizon` is off by default, so state is kept forever unless asked. With both event
//! rules off a run deletes no events. `enabled = false` only stops the schedule.
//! Environment overrides follow the usual pattern, e.g. `EM_TERMINATOR__EVENT_MAX_TIME=30d`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::schedule::CronSchedule;

/// Advisory lock key the replicas contend for: "EVTERMIN".
pub(crate) const DEFAULT_LOCK_KEY: i64 = 0x4556_5445_524D_494E;

/// Longest rule duration accepted; keeps the cutoff arithmetic far from any overflow.
const MAX_RULE_DURATION: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// Settings of the terminator, checked as they are read: each value is in range, and the
/// schedule is one the scheduler accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TerminatorConfig {
    /// Whether `run` schedules the job (the `terminate` command runs regardless).
    pub enabled: bool,
    /// When `run` starts a run.
    pub schedule: CronSchedule,
    /// Events inserted longer ago than this are deleted; `None` (`"0"` or `""`) disables the rule.
    #[serde(deserialize_with = "rule_duration")]
    pub event_max_time: Option<Duration>,
    /// Only the newest this many events are kept; `None` (`0` or `""`) disables the rule.
    #[serde(deserialize_with = "optional_count")]
    pub event_max_number: Option<u64>,
    /// Rows per DELETE statement (1 to 1 000 000); each statement is its own short transaction.
    #[serde(deserialize_with = "batch_size")]
    pub batch_size: u32,
    /// Rest between two batches (at most 60 s), so a large backlog does not monopolise the
    /// database; `0s` deletes flat out.
    #[serde(deserialize_with = "batch_pause")]
    pub batch_pause: Duration,
    /// `entity_state` rows of entities untouched (no row of the entity written) for longer than
    /// this are pruned; `None` (`"0"` or `""`, the default) keeps state forever.
    #[serde(deserialize_with = "rule_duration")]
    pub state_horizon: Option<Duration>,
    /// Key of the session-level advisory lock that lets one replica at a time run.
    pub lock_key: i64,
}

impl Default for TerminatorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            schedule: CronSchedule::default(),
            event_max_time: Some(Duration::from_secs(2_630_016)), // humantime's `1month`
            event_max_number: Some(50_000),
            batch_size: 10_000,
            batch_pause: Duration::from_millis(20),
            state_horizon: None,
            lock_key: DEFAULT_LOCK_KEY,
        }
    }
}

fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        n @ 1..=1_000_000 => Ok(n),
        _ => Err(serde::de::Error::custom("must be between 1 and 1000000")),
    }
}

fn batch_pause<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match humantime_serde::deserialize(d)? {
        pause if pause <= Duration::from_secs(60) => Ok(pause),
        _ => Err(serde::de::Error::custom("must be at most 60s")),
    }
}

/// A rule's duration: humantime (`30d`, `1month`) from 1 s to 100 years; `"0"`, `""` or
/// integer `0` mean "disabled".
fn rule_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Text(String),
    }
    let duration = match Raw::deserialize(d)? {
        Raw::Int(0) => return Ok(None),
        Raw::Int(_) => {
            return Err(serde::de::Error::custom(
                "a duration needs a unit, e.g. \"30d\" or \"1month\" (\"0\" disables)",
            ))
        }
        Raw::Text(s) if s.trim().is_empty() => return Ok(None),
        Raw::Text(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); use e.g. \"30d\" or \"1month\", \"0\" disables"
            ))
        })?,
    };
    if duration.is_zero() {
        Ok(None)
    } else if duration < Duration::from_secs(1) {
        Err(serde::de::Error::custom(
            "must be at least 1s (or \"0\" to disable)",
        ))
    } else if duration > MAX_RULE_DURATION {
        Err(serde::de::Error::custom("must be at most 100 years"))
    } else {
        Ok(Some(duration))
    }
}

/// A non-negative count; `0` or `""` mean "disabled". Strings of digits are accepted for
/// environment overrides.
fn optional_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Text(String),
    }
    let n = match Raw::deserialize(d)? {
        Raw::Int(n) => n,
        Raw::Text(s) if s.trim().is_empty() => 0,
        Raw::Text(s) => s.trim().replace('_', "").parse::<i64>().map_err(|_| {
            serde::de::Error::custom(format!("`{s}` is not a whole number (0 disables)"))
        })?,
    };
    match n {
        0 => Ok(None),
        n if n < 0 => Err(serde::de::Error::custom(
            "must not be negative (0 disables)",
        )),
        n => Ok(Some(n as u64)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn load(text: &str) -> Result<TerminatorConfig, ConfigError> {
        Config::from_table(text.parse().unwrap()).map(|c| c.terminator)
    }

    #[test]
    fn defaults_follow_esoz_termination() {
        let c = load("").unwrap();
        assert!(c.enabled);
        assert_eq!(c.schedule.as_str(), "0 0 3 * * *");
        assert_eq!(
            c.event_max_time,
            Some(humantime::parse_duration("1month").unwrap())
        );
        assert_eq!(c.event_max_number, Some(50_000));
        assert_eq!(c.batch_size, 10_000);
        assert_eq!(c.state_horizon, None);
        assert_eq!(c.lock_key, DEFAULT_LOCK_KEY);
    }

    #[test]
    fn documented_defaults_are_the_defaults() {
        let doc = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! [terminator]"))
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").split('#').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(load(&doc).unwrap(), TerminatorConfig::default());
    }

    #[test]
    fn humantime_values_are_read() {
        let c = load(
            "[terminator]\nevent_max_time = \"30d\"\nstate_horizon = \"1year\"\n\
             event_max_number = \"1_000\"\nschedule = \"*/1 * * * * *\"",
        )
        .unwrap();
        assert_eq!(c.event_max_time, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            c.state_horizon,
            Some(humantime::parse_duration("1year").unwrap())
        );
        assert_eq!(c.event_max_number, Some(1000));
    }

    #[test]
    fn zero_or_empty_disables_a_rule() {
        for (time, number) in [
            ("\"0\"", "0"),
            ("\"\"", "\"\""),
            ("0", "\"0\""),
            ("\"0s\"", "0"),
        ] {
            let c = load(&format!(
                "[terminator]\nevent_max_time = {time}\nevent_max_number = {number}\nstate_horizon = {time}"
            ))
            .unwrap();
            assert_eq!(c.event_max_time, None, "{time}");
            assert_eq!(c.event_max_number, None, "{number}");
            assert_eq!(c.state_horizon, None, "{time}");
        }
    }

    #[test]
    fn environment_overrides_reach_the_section() {
        let c = Config::load_with_env(
            None,
            [
                ("EM_TERMINATOR__EVENT_MAX_TIME".to_owned(), "7d".to_owned()),
                ("EM_TERMINATOR__EVENT_MAX_NUMBER".to_owned(), "".to_owned()),
                ("EM_TERMINATOR__BATCH_SIZE".to_owned(), "500".to_owned()),
            ],
        )
        .unwrap()
        .terminator;
        assert_eq!(c.event_max_time, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(c.event_max_number, None);
        assert_eq!(c.batch_size, 500);
    }

    #[test]
    fn bad_values_name_the_key_and_reason() {
        let cases = [
            (
                "schedule = \"0 3 * * *\"",
                "terminator.schedule",
                "6 or 7 fields",
            ),
            ("schedule = \"daily\"", "terminator.schedule", "cron"),
            (
                "event_max_time = \"a month\"",
                "terminator.event_max_time",
                "not a duration",
            ),
            ("event_max_time = 30", "terminator.event_max_time", "unit"),
            (
                "event_max_time = \"10ms\"",
                "terminator.event_max_time",
                "at least 1s",
            ),
            (
                "event_max_time = \"1000years\"",
                "terminator.event_max_time",
                "at most",
            ),
            (
                "event_max_number = -1",
                "terminator.event_max_number",
                "negative",
            ),
            (
                "event_max_number = \"many\"",
                "terminator.event_max_number",
                "whole number",
            ),
            ("batch_size = 0", "terminator.batch_size", "between"),
            (
                "batch_pause = \"2min\"",
                "terminator.batch_pause",
                "at most 60s",
            ),
            (
                "state_horizon = \"soon\"",
                "terminator.state_horizon",
                "not a duration",
            ),
            ("lock_key = \"x\"", "terminator.lock_key", ""),
            ("max_age = \"1d\"", "max_age", "unknown field"),
        ];
        for (line, key, reason) in cases {
            let e = load(&format!("[terminator]\n{line}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(reason), "{line}: {e}");
        }
    }
}
