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
    pub auto_offset_reset: OffsetReset,
    /// How the connection is secured: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`
    /// (unset: librdkafka's default, plaintext, unless `kafka.properties` says otherwise).
    pub security_protocol: Option<super::SecurityProtocol>,
    /// SASL mechanism and credentials.
    pub sasl: super::SaslConfig,
    /// CA and client certificate files.
    pub tls: super::TlsConfig,
    /// Extra librdkafka properties passed through unchanged (e.g. `ssl.key.password`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            group_id: "event-manager".into(),
            client_id: "event-manager".into(),
            session_timeout: Duration::from_secs(10),
            auto_offset_reset: OffsetReset::Earliest,
            security_protocol: None,
            sasl: super::SaslConfig::default(),
            tls: super::TlsConfig::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// `auto.offset.reset`: where a partition without a stored offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// At the log start.
    Earliest,
    /// At the log end.
    Latest,
}

impl OffsetReset {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

impl KafkaConfig {
    /// The security settings, for [`super::client_config`].
    pub fn security(&self) -> super::Security<'_> {
        super::Security {
            protocol: self.security_protocol,
            sasl: &self.sasl,
            tls: &self.tls,
        }
    }

    /// Checks values serde cannot check, naming the key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                "must not be empty",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.group_id", "must not be empty"));
        }
        for key in self.properties.keys() {
            if super::is_protected(key) {
                return Err(ConfigError::invalid(
                    &format!("kafka.properties.{key}"),
                    "is managed by event-manager (exactly-once relies on it) and cannot be overridden",
                ));
            }
        }
        self.security().validate(&self.properties)
    }
}
