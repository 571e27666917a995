//! The `[webhooks]` configuration section: the SFS clinic keys and the FHIRcast subscriptions
//! the bridges accept, and how long they wait for the broker.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::formats::{SessionIds, MAX_PAYLOAD_BYTES};
use crate::secret::Secret;

/// `[webhooks]`: the HTTP bridges that produce into Kafka.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Longest wait for the broker's acknowledgement before answering 503.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// The `Retry-After` given with a 503.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Largest accepted request body (bytes); at most what the decoders accept.
    pub max_body_bytes: usize,
    /// `POST /webhooks/sfs`.
    pub sfs: SfsWebhookConfig,
    /// The FHIRcast subscriber callback `/webhooks/fhircast`.
    pub fhircast: FhircastWebhookConfig,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            produce_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(5),
            max_body_bytes: 256 * 1024,
            sfs: SfsWebhookConfig::default(),
            fhircast: FhircastWebhookConfig::default(),
        }
    }
}

/// `[webhooks.sfs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfsWebhookConfig {
    /// Topic the events are produced to.
    pub topic: String,
    /// Clinic id → the clinic's API key. No clinics: every request is refused (401).
    pub clinics: BTreeMap<String, Secret>,
}

impl Default for SfsWebhookConfig {
    fn default() -> Self {
        Self {
            topic: "sfs.events".into(),
            clinics: BTreeMap::new(),
        }
    }
}

/// `[webhooks.fhircast]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhircastWebhookConfig {
    /// Topic the notifications are produced to.
    pub topic: String,
    /// Subscriptions by a local name (used in logs and environment overrides).
    /// No subscriptions: every verification is 404 and every notification 403.
    pub subscriptions: BTreeMap<String, FhircastSubscription>,
    /// Key of the hash that stands for a `hub.topic` without a configured subscription in
    /// entity ids (secret). Unset: an unkeyed hash, which hides a random topic but lets a
    /// guessable one be confirmed.
    pub topic_id_key: Option<Secret>,
}

impl Default for FhircastWebhookConfig {
    fn default() -> Self {
        Self {
            topic: "fhircast.events".into(),
            subscriptions: BTreeMap::new(),
            topic_id_key: None,
        }
    }
}

impl FhircastWebhookConfig {
    /// How entity ids stand for a session's `hub.topic`: the subscription's name, else the
    /// keyed hash (docs/architecture.md, "FHIRcast session ids").
    pub(crate) fn session_ids(&self) -> SessionIds {
        SessionIds::new(
            self.topic_id_key
                .as_ref()
                .map_or(&[][..], |k| k.expose().as_bytes()),
            self.subscriptions
                .iter()
                .map(|(name, s)| (s.hub_topic.clone(), name.clone())),
        )
    }
}

/// One FHIRcast session this subscriber accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhircastSubscription {
    /// The session's `hub.topic`, exactly as the hub sends it.
    pub hub_topic: String,
    /// The `hub.secret` given when subscribing: when set, every notification must carry a
    /// valid `X-Hub-Signature`.
    #[serde(default)]
    pub secret: Option<Secret>,
}

impl WebhooksConfig {
    /// Whether any bridge can accept anything (and so needs a producer).
    pub(crate) fn any_configured(&self) -> bool {
        !self.sfs.clinics.is_empty() || !self.fhircast.subscriptions.is_empty()
    }

    /// Checks values serde cannot check.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.produce_timeout) {
            return Err(invalid(
                "webhooks.produce_timeout",
                "must be between 100ms and 60s",
            ));
        }
        if self.retry_after < Duration::from_secs(1) {
            return Err(invalid("webhooks.retry_after", "must be at least 1s"));
        }
        if !(1024..=MAX_PAYLOAD_BYTES).contains(&self.max_body_bytes) {
            return Err(invalid(
                "webhooks.max_body_bytes",
                &format!("must be between 1024 and {MAX_PAYLOAD_BYTES} (what the decoders accept)"),
            ));
        }
        if self.sfs.topic.trim().is_empty() {
            return Err(invalid("webhooks.sfs.topic", "must not be empty"));
        }
        let mut keys = HashSet::new();
        for (clinic, key) in &self.sfs.clinics {
            let path = format!("webhooks.sfs.clinics.{clinic}");
            if clinic.trim().is_empty() {
                return Err(invalid("webhooks.sfs.clinics", "a clinic id is empty"));
            }
            if key.expose().trim().is_empty() {
                return Err(invalid(&path, "the API key must not be empty"));
            }
            if !keys.insert(key.expose()) {
                return Err(invalid(
                    &path,
                    "the API key is also configured for another clinic",
                ));
            }
        }
        if self.fhircast.topic.trim().is_empty() {
            return Err(invalid("webhooks.fhircast.topic", "must not be empty"));
        }
        if self
            .fhircast
            .topic_id_key
            .as_ref()
            .is_some_and(|k| k.expose().len() < 16)
        {
            return Err(invalid(
                "webhooks.fhircast.topic_id_key",
                "must be at least 16 characters (leave it out for an unkeyed hash)",
            ));
        }
        let mut topics = HashSet::new();
        for (name, sub) in &self.fhircast.subscriptions {
            let path = format!("webhooks.fhircast.subscriptions.{name}");
            if sub.hub_topic.trim().is_empty() {
                return Err(invalid(&format!("{path}.hub_topic"), "must not be empty"));
            }
            if !topics.insert(sub.hub_topic.as_str()) {
                return Err(invalid(
                    &format!("{path}.hub_topic"),
                    "is also configured for another subscription",
                ));
            }
            if sub
                .secret
                .as_ref()
                .is_some_and(|s| s.expose().trim().is_empty())
            {
                return Err(invalid(
                    &format!("{path}.secret"),
                    "must not be empty (leave it out for unsigned notifications)",
                ));
            }
        }
        Ok(())
    }
}
