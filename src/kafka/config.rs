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
    /// Extra librdkafka properties passed through unchanged (e.g. `ssl.key.password`). librdkafka
    /// takes every value as text: a number or a boolean the file gives is taken as its text (an
    /// `EM_KAFKA__PROPERTIES__<name>` variable's value is text already, see `crate::config`).
    #[serde(deserialize_with = "property_values")]
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

/// `kafka.properties`, each value a string, a number or a boolean, kept as text.
fn property_values<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    /// One property's value as librdkafka takes it.
    struct Text(String);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(TextVisitor)
        }
    }

    struct TextVisitor;

    impl serde::de::Visitor<'_> for TextVisitor {
        type Value = Text;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string, a number or a boolean")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
            Ok(Text(v.to_owned()))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
            Ok(Text(v.to_string()))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
            Ok(Text(v.to_string()))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text, E> {
            Ok(Text(v.to_string()))
        }

        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Text, E> {
            Ok(Text(v.to_string()))
        }
    }

    let values = BTreeMap::<String, Text>::deserialize(deserializer)?;
    Ok(values.into_iter().map(|(k, Text(v))| (k, v)).collect())
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
