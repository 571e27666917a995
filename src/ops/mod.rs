//! Operating the pipeline: the answers an on-call engineer asks for — is a group keeping up
//! ([`status`]), what was rejected and why, and sending it back after a fix ([`dlq`]). The
//! command line prints them; the console serves the same typed results as JSON.

pub mod dlq;
pub mod status;

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::{ConnectionReporter, ProbeConsumer};
use crate::store::StoreError;

/// How long one request to the broker may take before the broker counts as unreachable.
pub(crate) const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an operator's question could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// No broker answered.
    #[error("cannot reach Kafka at {bootstrap}: {cause}")]
    Unreachable {
        /// `kafka.bootstrap_servers`.
        bootstrap: String,
        /// The connection's failure, naming the setting to fix when known.
        cause: String,
    },
    /// Kafka answered with an error.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The EventDB could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The group has no stored positions.
    #[error("unknown consumer group `{group}`: the EventDB stores no positions for it ({})", known_groups(.known))]
    UnknownGroup {
        /// The group asked for.
        group: String,
        /// The groups with stored positions.
        known: Vec<String>,
    },
    /// The topic does not exist on the broker.
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    /// The topic has no such partition.
    #[error("topic `{topic}` has no partition {partition} (it has {count})")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// How many it has.
        count: usize,
    },
    /// No message at this position.
    #[error("no message at offset {offset} of {topic}/{partition} (the log holds {low}..{high})")]
    NoMessage {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The offset asked for.
        offset: i64,
        /// Log start offset.
        low: i64,
        /// Log end offset.
        high: i64,
    },
    /// A message is not a dead letter of event-manager.
    #[error("{0}")]
    NotADeadLetter(String),
    /// A blocking Kafka task ended abnormally.
    #[error("kafka task failed: {0}")]
    Task(String),
}

fn known_groups(known: &[String]) -> String {
    if known.is_empty() {
        "it stores none yet".to_owned()
    } else {
        format!("groups with positions: {}", known.join(", "))
    }
}

/// A Kafka client's failure as the operator should read it: a broker that does not answer is
/// named with its address and the cause the connection reporter knows.
pub(crate) fn kafka_error(
    error: KafkaError,
    bootstrap: &str,
    reporter: &ConnectionReporter,
) -> OpsError {
    let unreachable = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SSL
        )
    );
    if unreachable {
        OpsError::Unreachable {
            bootstrap: bootstrap.to_owned(),
            cause: reporter.current().unwrap_or_else(|| error.to_string()),
        }
    } else {
        OpsError::Kafka(error)
    }
}

/// The partitions of `topic`, in order; [`OpsError::UnknownTopic`] when the broker does not
/// know it.
pub(crate) fn partitions_of(
    consumer: &ProbeConsumer,
    topic: &str,
    bootstrap: &str,
    reporter: &ConnectionReporter,
) -> Result<Vec<i32>, OpsError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .map_err(|e| kafka_error(e, bootstrap, reporter))?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(OpsError::UnknownTopic(topic.to_owned()));
    };
    if meta.error().is_some() || meta.partitions().is_empty() {
        return Err(OpsError::UnknownTopic(topic.to_owned()));
    }
    let mut partitions: Vec<i32> = meta.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    Ok(partitions)
}

/// Runs blocking librdkafka calls off the async runtime.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, OpsError>
where
    F: FnOnce() -> Result<T, OpsError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| OpsError::Task(e.to_string()))?
}
