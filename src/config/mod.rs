//! Configuration: one TOML file plus `EM_…` environment overrides, validated at start-up.
//!
//! Environment overrides name a key path with `__` between levels, e.g.
//! `EM_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or `EM_PIPELINE__BATCH_SIZE=500`. `DATABASE_URL`
//! is accepted for `database.url` and `EVENTS_LIST_MAX_PERIOD_HOURS` (the name ESOZ uses) for
//! `api.events_list_max_period_hours`; the `EM_…` form wins when both are set. Values are read
//! as TOML scalars when they parse as one (numbers, booleans), else as strings, except those of
//! `kafka.properties`, which are librdkafka's text, secrets among them, and stay exactly as given.

use std::path::Path;

use serde::Deserialize;

pub use crate::api::config::{ApiConfig, AuthConfig, HttpConfig};
pub use crate::api::webhooks::config::WebhooksConfig;
pub use crate::config_error::ConfigError;
pub use crate::kafka::KafkaConfig;
pub use crate::pipeline::fhir_lookup::FhirConfig;
pub use crate::pipeline::topics::{load_topic_rules, HeaderType, TopicRule};
pub use crate::pipeline::PipelineConfig;
pub use crate::secret::Secret;
pub use crate::store::DatabaseConfig;
pub use crate::telemetry::{LogConfig, LogFormat};
pub use crate::terminator::TerminatorConfig;

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
    pub terminator: TerminatorConfig,
    /// The webhook bridges (`/webhooks/…`).
    pub webhooks: WebhooksConfig,
    /// FHIR look-ups of statuses messages leave out.
    pub fhir: FhirConfig,
    /// The events API.
    pub api: ApiConfig,
    /// Bearer-token authentication of the events API.
    pub auth: AuthConfig,
}

impl From<&Config> for crate::pipeline::PipelineSettings {
    fn from(config: &Config) -> Self {
        Self {
            pipeline: config.pipeline.clone(),
            kafka: config.kafka.clone(),
            fhir: config.fhir.clone(),
        }
    }
}

impl Config {
    /// Loads the file (when given), applies the environment, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`], with an explicit environment (for tests).
    pub(crate) fn load_with_env(
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
    pub(crate) fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
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
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.database.validate()?;
        self.pipeline.validate()?;
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
        // librdkafka's properties are text, secrets among them: taken exactly as given (a
        // password `1e3` is not the number 1000).
        let value = match path.as_slice() {
            [section, properties, _] if section == "kafka" && properties == "properties" => {
                toml::Value::String(raw)
            }
            _ => parse_env_value(&raw),
        };
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
    use std::time::Duration;

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
    fn kafka_properties_take_numbers_and_booleans_as_text() {
        let c = load(
            "[kafka.properties]\n\"fetch.wait.max.ms\" = 100\n\"check.crcs\" = true\n\"ssl.key.password\" = \"12\"",
            &[
                ("EM_KAFKA__PROPERTIES__queued.max.messages.kbytes", "4096"),
                ("EM_KAFKA__PROPERTIES__enable.ssl.certificate.verification", "false"),
                ("EM_KAFKA__PROPERTIES__client.rack", "eu-1a"),
                ("EM_KAFKA__PROPERTIES__sasl.password", "1e3"),
                ("EM_KAFKA__PROPERTIES__ssl.key.password", "0x10"),
            ],
        )
        .unwrap();
        let p = &c.kafka.properties;
        assert_eq!(p["fetch.wait.max.ms"], "100");
        assert_eq!(p["check.crcs"], "true");
        // The environment's values are the text given, never a number's spelling of it.
        assert_eq!(p["sasl.password"], "1e3");
        assert_eq!(p["ssl.key.password"], "0x10");
        assert_eq!(p["queued.max.messages.kbytes"], "4096");
        assert_eq!(p["enable.ssl.certificate.verification"], "false");
        assert_eq!(p["client.rack"], "eu-1a");
        let e = load("[kafka.properties]\n\"linger.ms\" = [5]", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kafka.properties") && e.contains("a string, a number or a boolean"),
            "{e}"
        );
    }

    #[test]
    fn defaults_are_valid() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.pipeline.batch_size, 2000);
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
            ("[pipeline]\nstore_concurrency = 0", "pipeline.store_concurrency"),
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
