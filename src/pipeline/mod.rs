//! The pipeline (docs/architecture.md, "Data flow"): consume → decode → select → detect →
//! store → commit.

mod batch;
mod config;
mod consumer;
pub mod dead_letter;
pub mod fhir_lookup;
mod flight;
mod group;
mod internal_events;
mod lookups;
pub mod process;
pub mod rules;
pub mod topics;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::health::Readiness;
use crate::kafka::KafkaConfig;
use crate::metrics::PipelineMetrics;
use crate::store::EventStore;

pub use config::PipelineConfig;
pub use fhir_lookup::FhirConfig;
pub(crate) use internal_events::{DatabaseReachable, Instruments};
pub use rules::RuleSet;

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The Kafka client could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The FHIR look-up client could not be built.
    #[error("FHIR look-up client: {0}")]
    Lookup(#[from] reqwest::Error),
    /// The consumer thread could not be started.
    #[error("starting the consumer thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the pipeline is built from: its own section, and the Kafka and FHIR look-up sections
/// (`From<&Config>` in [`crate::config`] picks them out of the whole configuration).
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// `[pipeline]`.
    pub pipeline: PipelineConfig,
    /// `[kafka]`.
    pub kafka: KafkaConfig,
    /// `[fhir]`.
    pub fhir: FhirConfig,
}

/// A running consumer.
#[derive(Debug)]
pub struct PipelineHandle {
    thread: std::thread::JoinHandle<()>,
}

impl PipelineHandle {
    /// Waits (without blocking the runtime) until the consumer has stopped.
    pub async fn stopped(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = self.thread.join();
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
}

/// Starts the consumer on its own thread. It stops when `shutdown` is cancelled, after finishing
/// and committing its in-flight batch.
pub fn start(
    config: impl Into<PipelineSettings>,
    rules: Arc<RuleSet>,
    store: EventStore,
    metrics: PipelineMetrics,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<PipelineHandle, PipelineError> {
    let runtime = tokio::runtime::Handle::current();
    let consumer = consumer::build(
        &config.into(),
        runtime,
        store,
        rules,
        Instruments::new(metrics, readiness),
        shutdown,
    )?;
    let thread = std::thread::Builder::new()
        .name("consumer".into())
        .spawn(move || consumer.run())?;
    Ok(PipelineHandle { thread })
}
