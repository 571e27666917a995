//! The bridges' producer: idempotent, `acks=all`, created once and shared by all requests.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureRecord, Producer as _};

use super::config::WebhooksConfig;
use crate::kafka::{self, KafkaConfig, Role};

/// Why a message was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ProduceError {
    /// The local queue is full (the broker is slow or away).
    #[error("the producer queue is full")]
    QueueFull,
    /// No acknowledgement within the produce timeout.
    #[error("no acknowledgement in time")]
    Timeout,
    /// The broker refused the message or the client failed.
    #[error("kafka: {0}")]
    Kafka(KafkaError),
}

/// An idempotent producer with a bounded wait for acknowledgements.
pub(crate) struct BridgeProducer {
    producer: kafka::Producer,
    /// `kafka.sasl.password_file`, read again before sends so a rotated password is used.
    password_file: Option<kafka::PasswordFile>,
    timeout: Duration,
}

impl std::fmt::Debug for BridgeProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeProducer")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl BridgeProducer {
    /// Creates the producer (it connects lazily).
    pub(crate) fn new(config: &WebhooksConfig, kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        let timeout = config.produce_timeout;
        let role = Role::WebhookProducer {
            produce_timeout: timeout,
        };
        Ok(Self {
            producer: kafka::producer(kafka, role, &kafka::ConnectionReporter::new(kafka))?,
            password_file: kafka::PasswordFile::watch(&kafka.sasl),
            timeout,
        })
    }

    /// Produces one message keyed by `key` and waits until the broker acknowledged it.
    pub(crate) async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
    ) -> Result<(), ProduceError> {
        if let Some(watch) = &self.password_file {
            if let Some(password) = watch.changed() {
                if let Err(error) = watch.apply(self.producer.client(), &password) {
                    tracing::error!(%error, "kafka.sasl.password_file changed but was refused");
                }
            }
        }
        let record = FutureRecord::to(topic).key(key).payload(payload);
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    ProduceError::QueueFull
                }
                other => ProduceError::Kafka(other),
            })?;
        // message.timeout.ms bounds delivery; the extra second only guards against a lost report.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _)))) => {
                Err(ProduceError::Timeout)
            }
            Ok(Ok(Err((e, _)))) => Err(ProduceError::Kafka(e)),
            Ok(Err(_canceled)) => Err(ProduceError::Kafka(KafkaError::Canceled)),
            Err(_elapsed) => Err(ProduceError::Timeout),
        }
    }
}
