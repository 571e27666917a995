//! The one place that makes Kafka clients. Every client the binary creates — the pipeline's
//! consumer and dead-letter producer, the webhook bridges' producer, `replay`'s probe, the
//! demo's feed, `status`'s group probe, `dlq`'s reader and its redrive producer — gets its
//! `rdkafka::ClientConfig` from [`client_config`], so that the security settings
//! (`kafka.security_protocol`, `kafka.sasl.*`, `kafka.tls.*`, see [`security`]) and
//! `kafka.properties` reach each of them, and the settings exactly-once relies on cannot be
//! overridden by any. Their connection errors are logged once per cause ([`connection`]).

pub mod connection;
pub mod security;

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

mod config;

pub use config::{KafkaConfig, OffsetReset};

pub use connection::{Cause, ClientErrors, ConnectionReporter};
pub use security::{PasswordFile, SaslConfig, Security, SecurityProtocol, TlsConfig};

/// A producer made by [`producer`].
pub type Producer = FutureProducer<ClientErrors>;

/// A consumer made by [`probe_consumer`] (no group membership of its own).
pub type ProbeConsumer = BaseConsumer<ClientErrors>;

/// librdkafka properties event-manager sets itself, which `kafka.properties` may not set: the
/// consumer's exactly-once relies on them (offsets are stored in PostgreSQL, never by Kafka
/// auto-commit), and the brokers and group are their own configuration keys.
pub(crate) const PROTECTED_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
    "partition.assignment.strategy",
    "isolation.level",
];

/// Whether `kafka.properties` may set this librdkafka property.
pub(crate) fn is_protected(key: &str) -> bool {
    PROTECTED_PROPERTIES.contains(&key)
}

/// What a client is for; each role adds its own settings to the shared ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role<'a> {
    /// The pipeline's consumer-group member: manual offsets, cooperative-sticky assignment,
    /// committed transactions only, statistics for the lag gauge.
    Consumer,
    /// The pipeline's producer of dead letters: idempotent, `acks=all`.
    DeadLetterProducer,
    /// The webhook bridges' producer: idempotent, `acks=all`, acknowledgement within
    /// `produce_timeout`.
    WebhookProducer {
        /// Longest wait for an acknowledgement.
        produce_timeout: Duration,
    },
    /// `replay`'s probe of metadata, watermarks and timestamps, under a group of its own.
    ReplayProbe {
        /// The group whose positions are replayed.
        group_id: &'a str,
    },
    /// The demo's producer of sample messages.
    DemoFeed,
    /// `status`'s reader of a group's offsets committed to Kafka: `group.id` is the group's,
    /// but it never subscribes (so it never joins the group) and never commits.
    GroupProbe {
        /// The group whose committed offsets are read.
        group_id: &'a str,
    },
    /// `dlq`'s reader of dead-letter topics, by assignment; commits nothing.
    DeadLetterReader,
    /// `dlq redrive`'s producer of dead letters back to their source topics: idempotent,
    /// `acks=all`.
    Redrive,
}

impl Role<'_> {
    /// The suffix of `client.id` (after `kafka.client_id`).
    fn client_suffix(self) -> &'static str {
        match self {
            Role::Consumer => "consumer",
            Role::DeadLetterProducer => "dead-letters",
            Role::WebhookProducer { .. } => "webhooks",
            Role::ReplayProbe { .. } => "replay",
            Role::DemoFeed => "demo-feed",
            Role::GroupProbe { .. } => "status",
            Role::DeadLetterReader => "dlq-reader",
            Role::Redrive => "redrive",
        }
    }
}

/// How often the consumer refreshes topic metadata unless `kafka.properties` says otherwise:
/// a topic created to match a rule's `pattern`, or partitions added to a subscribed topic, are
/// consumed within this time without a restart (librdkafka's own default is 5 minutes).
pub(crate) const CONSUMER_METADATA_REFRESH_MS: &str = "30000";

/// How far the consumer reads ahead unless `kafka.properties` says otherwise: at most this many
/// KiB of fetched messages wait in its queue (`queued.max.messages.kbytes`), several batches of
/// the default size. With librdkafka's own default, 64 MiB (or 100 000 messages), the pipeline's
/// peak RSS was 225–244 MiB while it caught up with a backlog on Apache Kafka, 182–190 with this
/// (docs/performance-log.md, 2026-12-04, night).
pub(crate) const CONSUMER_QUEUE_KBYTES: &str = "8192";

/// How soon the consumer fetches again after its queue was full (`fetch.queue.backoff.ms`):
/// librdkafka waits a second by default, longer than the pipeline takes to empty a queue of
/// [`CONSUMER_QUEUE_KBYTES`], so it would stall on every refill.
pub(crate) const CONSUMER_QUEUE_BACKOFF_MS: &str = "10";

/// A producer for `role`, whose connection errors `reporter` logs.
pub fn producer(
    kafka: &KafkaConfig,
    role: Role<'_>,
    reporter: &ConnectionReporter,
) -> Result<Producer, KafkaError> {
    client_config(kafka, role)?.create_with_context(ClientErrors(reporter.clone()))
}

/// A consumer for `role` that is not the pipeline's (e.g. `replay`'s probe).
pub(crate) fn probe_consumer(
    kafka: &KafkaConfig,
    role: Role<'_>,
    reporter: &ConnectionReporter,
) -> Result<ProbeConsumer, KafkaError> {
    client_config(kafka, role)?.create_with_context(ClientErrors(reporter.clone()))
}

/// The client configuration for `role`: defaults `kafka.properties` may change, then
/// `kafka.properties` (without the protected ones), the security settings, then the brokers,
/// the client id and the role's own settings, which win. Fails, naming the key, when a file of
/// the security settings cannot be read.
pub fn client_config(kafka: &KafkaConfig, role: Role<'_>) -> Result<ClientConfig, KafkaError> {
    let mut cc = ClientConfig::new();
    if role == Role::Consumer {
        cc.set(
            "topic.metadata.refresh.interval.ms",
            CONSUMER_METADATA_REFRESH_MS,
        )
        .set("queued.max.messages.kbytes", CONSUMER_QUEUE_KBYTES)
        .set("fetch.queue.backoff.ms", CONSUMER_QUEUE_BACKOFF_MS);
    }
    for (key, value) in &kafka.properties {
        if !is_protected(key) {
            cc.set(key, value);
        }
    }
    let security = kafka
        .security()
        .properties()
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
    for (key, value) in security {
        cc.set(key, value.expose());
    }
    cc.set("bootstrap.servers", &kafka.bootstrap_servers).set(
        "client.id",
        format!("{}-{}", kafka.client_id, role.client_suffix()),
    );
    match role {
        Role::Consumer => {
            cc.set("group.id", &kafka.group_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("isolation.level", "read_committed")
                // Where a partition starts when PostgreSQL stores no offset for it, and where it
                // continues when the stored offset is no longer in the log (retention removed it:
                // `earliest` continues at the log start, and the consumer counts and warns about
                // the gap; `latest` skips to the end).
                .set("auto.offset.reset", kafka.auto_offset_reset.as_str())
                .set(
                    "session.timeout.ms",
                    kafka.session_timeout.as_millis().to_string(),
                )
                .set("statistics.interval.ms", "5000");
        }
        Role::DeadLetterProducer => {
            cc.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("message.timeout.ms", "30000");
        }
        Role::WebhookProducer { produce_timeout } => {
            let ms = produce_timeout.as_millis();
            cc.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "2")
                .set("message.timeout.ms", ms.to_string())
                .set("request.timeout.ms", ms.clamp(100, 30_000).to_string());
        }
        Role::ReplayProbe { group_id } => {
            cc.set("group.id", format!("{group_id}-replay-probe"))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "false");
        }
        Role::DemoFeed => {
            cc.set("enable.idempotence", "true").set("linger.ms", "5");
        }
        Role::GroupProbe { group_id } => {
            cc.set("group.id", group_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false");
        }
        Role::DeadLetterReader => {
            cc.set("group.id", format!("{}-dlq-reader", kafka.client_id))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "true");
        }
        Role::Redrive => {
            cc.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("message.timeout.ms", "30000");
        }
    }
    Ok(cc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> [Role<'static>; 8] {
        [
            Role::Consumer,
            Role::DeadLetterProducer,
            Role::WebhookProducer {
                produce_timeout: Duration::from_secs(5),
            },
            Role::ReplayProbe { group_id: "g" },
            Role::DemoFeed,
            Role::GroupProbe { group_id: "g" },
            Role::DeadLetterReader,
            Role::Redrive,
        ]
    }

    #[test]
    fn every_role_applies_kafka_properties_but_not_the_protected_ones() {
        let mut kafka = KafkaConfig {
            bootstrap_servers: "b1:9092,b2:9092".into(),
            ..KafkaConfig::default()
        };
        kafka
            .properties
            .insert("security.protocol".into(), "sasl_ssl".into());
        kafka
            .properties
            .insert("sasl.mechanism".into(), "SCRAM-SHA-512".into());
        // Rejected by configuration validation; skipped here should one get through.
        kafka
            .properties
            .insert("enable.auto.commit".into(), "true".into());
        for role in roles() {
            let cc = client_config(&kafka, role).unwrap();
            assert_eq!(cc.get("security.protocol"), Some("sasl_ssl"), "{role:?}");
            assert_eq!(cc.get("sasl.mechanism"), Some("SCRAM-SHA-512"), "{role:?}");
            assert_eq!(cc.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
            assert_ne!(cc.get("enable.auto.commit"), Some("true"), "{role:?}");
            assert!(cc
                .get("client.id")
                .is_some_and(|id| id.starts_with("event-manager-")));
        }
    }

    #[test]
    fn every_role_applies_the_security_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not read here").unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "from-the-file\n").unwrap();
        let kafka = KafkaConfig {
            security_protocol: Some(SecurityProtocol::SaslSsl),
            sasl: SaslConfig {
                mechanism: Some("SCRAM-SHA-512".into()),
                username: Some("em".into()),
                password_file: Some(password),
                ..SaslConfig::default()
            },
            tls: TlsConfig {
                ca_file: Some(ca.clone()),
                ..TlsConfig::default()
            },
            ..KafkaConfig::default()
        };
        for role in roles() {
            let cc = client_config(&kafka, role).unwrap();
            assert_eq!(cc.get("security.protocol"), Some("sasl_ssl"), "{role:?}");
            assert_eq!(cc.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(cc.get("sasl.username"), Some("em"));
            assert_eq!(cc.get("sasl.password"), Some("from-the-file"));
            assert_eq!(cc.get("ssl.ca.location"), ca.to_str());
        }
        let missing = KafkaConfig {
            tls: TlsConfig {
                ca_file: Some(dir.path().join("absent.pem")),
                ..TlsConfig::default()
            },
            ..kafka
        };
        let err = client_config(&missing, Role::Consumer)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kafka.tls.ca_file") && err.contains("absent.pem"),
            "{err}"
        );
    }

    #[test]
    fn the_consumers_defaults_give_way_to_kafka_properties() {
        let mut kafka = KafkaConfig::default();
        let consumer = client_config(&kafka, Role::Consumer).unwrap();
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("8192"));
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(
            consumer.get("topic.metadata.refresh.interval.ms"),
            Some("30000")
        );
        kafka
            .properties
            .insert("queued.max.messages.kbytes".into(), "65536".into());
        kafka
            .properties
            .insert("topic.metadata.refresh.interval.ms".into(), "300000".into());
        let consumer = client_config(&kafka, Role::Consumer).unwrap();
        assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("65536"));
        assert_eq!(
            consumer.get("topic.metadata.refresh.interval.ms"),
            Some("300000")
        );
        // kafka.properties reach every client; the default read-ahead is the consumer's alone.
        let probe = client_config(&kafka, Role::ReplayProbe { group_id: "g" }).unwrap();
        assert_eq!(probe.get("queued.max.messages.kbytes"), Some("65536"));
        let probe =
            client_config(&KafkaConfig::default(), Role::ReplayProbe { group_id: "g" }).unwrap();
        assert_eq!(probe.get("queued.max.messages.kbytes"), None);
    }

    #[test]
    fn role_settings_win_over_kafka_properties() {
        let mut kafka = KafkaConfig::default();
        kafka.properties.insert("acks".into(), "1".into());
        kafka
            .properties
            .insert("statistics.interval.ms".into(), "0".into());
        let consumer = client_config(&kafka, Role::Consumer).unwrap();
        assert_eq!(consumer.get("group.id"), Some("event-manager"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        assert_eq!(consumer.get("statistics.interval.ms"), Some("5000"));
        let dead_letters = client_config(&kafka, Role::DeadLetterProducer).unwrap();
        assert_eq!(dead_letters.get("acks"), Some("all"));
        assert_eq!(dead_letters.get("enable.idempotence"), Some("true"));
        let probe = client_config(&kafka, Role::ReplayProbe { group_id: "g" }).unwrap();
        assert_eq!(probe.get("group.id"), Some("g-replay-probe"));
        assert_eq!(probe.get("enable.auto.commit"), Some("false"));
        let status = client_config(&kafka, Role::GroupProbe { group_id: "g" }).unwrap();
        assert_eq!(status.get("group.id"), Some("g"));
        assert_eq!(status.get("enable.auto.commit"), Some("false"));
        let redrive = client_config(&kafka, Role::Redrive).unwrap();
        assert_eq!(redrive.get("acks"), Some("all"));
        assert_eq!(redrive.get("enable.idempotence"), Some("true"));
    }
}
