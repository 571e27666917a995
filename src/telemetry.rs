//! Logging set-up. Logs never carry message bodies, patient references or tokens: callers log
//! coordinates (topic, partition, offset) and reason codes only, and the libraries that print
//! what they carry at `debug` and `trace` (the PostgreSQL driver its bound parameters, librdkafka
//! its debug contexts, the HTTP stacks their requests) are held at `info` whatever the filter
//! says, unless `log.unsafe_payloads` is set (README, "Security notes").

use serde::Deserialize;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Logging settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (production) or `text`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `event_manager=debug,rdkafka=warn`.
    pub level: String,
    /// Lets the PostgreSQL, Kafka and HTTP client libraries log below `info`, where they print
    /// bound parameters, messages and bodies: patient data reaches the logs. For debugging a
    /// driver on test data only (README, "Security notes").
    pub unsafe_payloads: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
            unsafe_payloads: false,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Targets (crates, and librdkafka's own log) that print payloads below `info`.
pub(crate) const PAYLOAD_TARGETS: &[&str] = &[
    "tokio_postgres",
    "postgres",
    "postgres_protocol",
    "deadpool_postgres",
    "refinery",
    "refinery_core",
    "librdkafka",
    "rdkafka",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
    "tower",
    "tower_http",
    "axum",
];

/// The most verbose level of [`PAYLOAD_TARGETS`] without `log.unsafe_payloads`.
pub(crate) const PAYLOAD_TARGETS_CAP: LevelFilter = LevelFilter::INFO;

/// A filter that passes everything except [`PAYLOAD_TARGETS`] below their cap.
pub(crate) fn payload_cap() -> Targets {
    PAYLOAD_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, name| t.with_target(*name, PAYLOAD_TARGETS_CAP),
    )
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured level; neither lifts
/// the payload cap, only `log.unsafe_payloads` does.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = if config.unsafe_payloads {
        Targets::new().with_default(LevelFilter::TRACE)
    } else {
        payload_cap()
    };
    let filter = filter.and(cap);
    let layer = match config.format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    // A second initialisation (tests, demo after run) keeps the first subscriber.
    drop(tracing_subscriber::registry().with(layer).try_init());
    if config.unsafe_payloads {
        tracing::warn!(
            "log.unsafe_payloads is set: driver and client libraries may log patient data"
        );
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn payload_targets_are_capped_at_info_and_nothing_else_is() {
        let cap = payload_cap();
        for target in [
            "tokio_postgres::query",
            "librdkafka",
            "hyper::proto::h1",
            "h2",
        ] {
            assert!(!cap.would_enable(target, &Level::DEBUG), "{target}");
            assert!(cap.would_enable(target, &Level::INFO), "{target}");
        }
        assert!(cap.would_enable("event_manager::pipeline", &Level::TRACE));
    }
}
