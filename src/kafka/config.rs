//! Kafka settings (`[kafka]`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config_error::ConfigError;

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

impl KafkaConfig {
    /// Checks values serde cannot check, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                "must not be empty",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.group_id", "must not be empty"));
        }
        if !matches!(self.auto_offset_reset.as_str(), "earliest" | "latest") {
            return Err(ConfigError::invalid(
                "kafka.auto_offset_reset",
                "must be `earliest` or `latest`",
            ));
        }
        for key in self.properties.keys() {
            if super::is_protected(key) {
                return Err(ConfigError::invalid(
                    &format!("kafka.properties.{key}"),
                    "is managed by event-manager (exactly-once relies on it) and cannot be overridden",
                ));
            }
        }
        Ok(())
    }
}
