//! Configuration: one TOML file plus `EM_…` environment overrides, validated at start-up.
//!
//! Environment overrides name a key path with `__` between levels, e.g.
//! `EM_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or `EM_PIPELINE__BATCH_SIZE=500`. `DATABASE_URL`
//! is accepted for `database.url` and `EVENTS_LIST_MAX_PERIOD_HOURS` (the name ESOZ uses) for
//! `api.events_list_max_period_hours`; the `EM_…` form wins when both are set. Values are read
//! as TOML scalars when they parse as one
//! (numbers, booleans), else as strings.

mod secret;
mod topics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::api::config::{ApiConfig, AuthConfig};
pub use crate::api::webhooks::config::WebhooksConfig;
pub use crate::pipeline::fhir_lookup::FhirConfig;
pub use secret::Secret;
pub use topics::{load_topic_rules, HeaderType, TopicRule};

/// A configuration problem: which key, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// File path.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A key is unknown or has a bad value.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A topic rule file is wrong.
    #[error("topic rules {file}: {reason}")]
    Topic {
        /// File path (or directory).
        file: PathBuf,
        /// What is wrong, naming the topic.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection and consumer group.
    pub kafka: KafkaConfig,
    /// The EventDB.
    pub database: DatabaseConfig,
    /// Batching and topic rules.
    pub pipeline: PipelineConfig,
    /// HTTP server.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Retention of the EventDB (see [`crate::terminator`]).
    pub terminator: crate::terminator::TerminatorConfig,
    /// The webhook bridges (`/webhooks/…`).
    pub webhooks: WebhooksConfig,
    /// FHIR look-ups of statuses messages leave out.
    pub fhir: FhirConfig,
    /// The events API.
    pub api: ApiConfig,
    /// Bearer-token authentication of the events API.
    pub auth: AuthConfig,
}

/// Kafka settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Consumer group id.
    pub group_id: String,
    /// `client.id` prefix.
    pub client_id: String,
    /// Consumer session timeout.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Where a group with no stored offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// Extra librdkafka properties passed through unchanged (e.g. `security.protocol`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            group_id: "event-manager".into(),
            client_id: "event-manager".into(),
            session_timeout: Duration::from_secs(10),
            auto_offset_reset: "earliest".into(),
            properties: BTreeMap::new(),
        }
    }
}

/// EventDB settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, e.g. `postgres://user@host:5432/eventdb`.
    pub url: String,
    /// Connection pool size.
    pub pool_size: usize,
    /// Timeout for connecting and for taking a connection from the pool.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@localhost:5432/eventdb".into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Pipeline settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most messages in one batch (one database transaction).
    pub batch_size: usize,
    /// Longest wait for a batch to fill before it is processed anyway.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Directory of topic rule files (`*.toml`).
    pub topics_dir: PathBuf,
    /// How long shutdown may take before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Longest backoff between retries while the database is unavailable.
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            batch_linger: Duration::from_millis(100),
            topics_dir: PathBuf::from("topics"),
            shutdown_grace: Duration::from_secs(30),
            max_retry_backoff: Duration::from_secs(10),
        }
    }
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
        }
    }
}

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

impl Config {
    /// Loads the file (when given), applies the environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`], with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.to_owned(),
                        message: e.message().to_owned(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        Self::from_table(table)
    }

    /// Builds a configuration from a TOML table and validates it.
    pub fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = inner.message().to_owned();
                // serde names the offending field itself for unknown keys.
                ConfigError::invalid(&path, message)
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                "must not be empty",
            ));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.group_id", "must not be empty"));
        }
        if !matches!(self.kafka.auto_offset_reset.as_str(), "earliest" | "latest") {
            return Err(ConfigError::invalid(
                "kafka.auto_offset_reset",
                "must be `earliest` or `latest`",
            ));
        }
        for key in self.kafka.properties.keys() {
            if crate::kafka::is_protected(key) {
                return Err(ConfigError::invalid(
                    &format!("kafka.properties.{key}"),
                    "is managed by event-manager (exactly-once relies on it) and cannot be overridden",
                ));
            }
        }
        if !self.database.url.starts_with("postgres://")
            && !self.database.url.starts_with("postgresql://")
        {
            return Err(ConfigError::invalid(
                "database.url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        if self.database.url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::invalid(
                "database.url",
                "is not a valid PostgreSQL URL",
            ));
        }
        if !(1..=1024).contains(&self.database.pool_size) {
            return Err(ConfigError::invalid(
                "database.pool_size",
                "must be between 1 and 1024",
            ));
        }
        if !(1..=100_000).contains(&self.pipeline.batch_size) {
            return Err(ConfigError::invalid(
                "pipeline.batch_size",
                "must be between 1 and 100000",
            ));
        }
        if self.pipeline.batch_linger > Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "pipeline.batch_linger",
                "must be at most 60s",
            ));
        }
        if self.pipeline.shutdown_grace < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "pipeline.shutdown_grace",
                "must be at least 1s",
            ));
        }
        if self.pipeline.max_retry_backoff < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "pipeline.max_retry_backoff",
                "must be at least 10ms",
            ));
        }
        self.terminator.validate()?;
        self.webhooks.validate()?;
        self.fhir.validate()?;
        self.api.validate()?;
        self.auth.validate()?;
        Ok(())
    }
}

/// `EM_` variables that are not configuration keys (`EM_CONFIG` names the file).
const NOT_KEYS: &[&str] = &["EM_CONFIG"];

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| {
            (k.starts_with("EM_") && !NOT_KEYS.contains(&k.as_str())) || alias(k).is_some()
        })
        .collect();
    // Plain aliases first, so that the `EM_…` spelling of the same key wins.
    vars.sort_by(|(a, _), (b, _)| (alias(a).is_none(), a).cmp(&(alias(b).is_none(), b)));
    for (name, raw) in vars {
        let path: Vec<String> = if let Some(path) = alias(&name) {
            path.iter().map(|s| (*s).to_owned()).collect()
        } else {
            name["EM_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect()
        };
        if path.len() < 2 || path.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                &name,
                "environment overrides are named EM_<SECTION>__<KEY>, e.g. EM_KAFKA__GROUP_ID",
            ));
        }
        let value = parse_env_value(&raw);
        let mut node = &mut *table;
        for segment in &path[..path.len() - 1] {
            let entry = node
                .entry(segment.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| {
                ConfigError::invalid(&path.join("."), format!("`{segment}` is not a table"))
            })?;
        }
        node.insert(path[path.len() - 1].clone(), value);
    }
    Ok(())
}

/// Environment variables accepted under their conventional names, and the key each sets.
fn alias(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "DATABASE_URL" => Some(&["database", "url"]),
        "EVENTS_LIST_MAX_PERIOD_HOURS" => Some(&["api", "events_list_max_period_hours"]),
        _ => None,
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
            ) => v,
            _ => toml::Value::String(raw.to_owned()),
        },
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml_text.parse().unwrap();
        apply_env(
            &mut table,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        Config::from_table(table)
    }

    #[test]
    fn defaults_are_valid() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.pipeline.batch_size, 1000);
        assert_eq!(c.pipeline.shutdown_grace, Duration::from_secs(30));
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            "[pipeline]\nbatch_size = 10\nbatch_linger = \"5ms\"",
            &[
                ("EM_PIPELINE__BATCH_SIZE", "20"),
                ("EM_KAFKA__GROUP_ID", "g1"),
                ("DATABASE_URL", "postgres://u@h:1/db"),
                ("HOME", "/root"),
                ("EM_CONFIG", "/etc/event-manager/config.toml"),
            ],
        )
        .unwrap();
        assert_eq!(c.pipeline.batch_size, 20);
        assert_eq!(c.pipeline.batch_linger, Duration::from_millis(5));
        assert_eq!(c.kafka.group_id, "g1");
        assert_eq!(c.database.url, "postgres://u@h:1/db");
    }

    #[test]
    fn esoz_period_variable_is_accepted_and_em_form_wins() {
        let c = load("", &[("EVENTS_LIST_MAX_PERIOD_HOURS", "6")]).unwrap();
        assert_eq!(c.api.events_list_max_period_hours, 6);
        let c = load(
            "",
            &[
                ("EVENTS_LIST_MAX_PERIOD_HOURS", "6"),
                ("EM_API__EVENTS_LIST_MAX_PERIOD_HOURS", "3"),
            ],
        )
        .unwrap();
        assert_eq!(c.api.events_list_max_period_hours, 3);
        let e = load("", &[("EVENTS_LIST_MAX_PERIOD_HOURS", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.events_list_max_period_hours"), "{e}");
    }

    #[test]
    fn webhook_keys_come_from_the_environment_and_are_never_shown() {
        let c = load(
            "[webhooks.fhircast.subscriptions.radiology]\nhub_topic = \"Ab12\"",
            &[
                ("EM_WEBHOOKS__SFS__CLINICS__CLINIC-1", "Key-Of-Clinic-1"),
                (
                    "EM_WEBHOOKS__FHIRCAST__SUBSCRIPTIONS__RADIOLOGY__SECRET",
                    "Hub-Secret",
                ),
                ("EM_FHIR__BEARER_TOKEN", "Bearer-Token"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.webhooks.sfs.clinics["clinic-1"].expose(),
            "Key-Of-Clinic-1"
        );
        let sub = &c.webhooks.fhircast.subscriptions["radiology"];
        assert_eq!(sub.hub_topic, "Ab12");
        assert_eq!(sub.secret.as_ref().map(Secret::expose), Some("Hub-Secret"));
        let shown = format!("{c:?}");
        for secret in ["Key-Of-Clinic-1", "Hub-Secret", "Bearer-Token"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn the_shipped_kubernetes_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kustomize/base/config.toml");
        let c = Config::load_with_env(Some(&path), Vec::new()).unwrap();
        assert!(!c.webhooks.any_configured());
        assert!(!c.fhir.enabled());
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let e = load("[pipeline]\nbatch_sise = 10", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_sise"), "{e}");
        let e = load("", &[("EM_PIPELINE__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        let e = load("[nope]\na = 1", &[]).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_reason() {
        let cases = [
            ("[pipeline]\nbatch_size = 0", "pipeline.batch_size"),
            ("[pipeline]\nbatch_size = \"x\"", "pipeline.batch_size"),
            (
                "[pipeline]\nbatch_linger = \"soon\"",
                "pipeline.batch_linger",
            ),
            ("[database]\nurl = \"mysql://x\"", "database.url"),
            ("[http]\nbind = \"nowhere\"", "http.bind"),
            (
                "[kafka]\nauto_offset_reset = \"middle\"",
                "kafka.auto_offset_reset",
            ),
            (
                "[kafka.properties]\n\"enable.auto.commit\" = \"true\"",
                "enable.auto.commit",
            ),
            ("[webhooks.sfs.clinics]\nc1 = \"\"", "webhooks.sfs.clinics.c1"),
            (
                "[webhooks.sfs.clinics]\nc1 = \"k\"\nc2 = \"k\"",
                "webhooks.sfs.clinics.c2",
            ),
            (
                "[webhooks.fhircast.subscriptions.a]\nhub_topic = \"t\"\n[webhooks.fhircast.subscriptions.b]\nhub_topic = \"t\"",
                "webhooks.fhircast.subscriptions.b.hub_topic",
            ),
            ("[webhooks]\nmax_body_bytes = 10", "webhooks.max_body_bytes"),
            ("[fhir]\nconcurrency = 0", "fhir.concurrency"),
            ("[fhir.servers]\n\"ftp://x\" = \"http://y\"", "fhir.servers"),
        ];
        for (text, key) in cases {
            let e = load(text, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
