//! Pipeline settings (`[pipeline]`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config_error::ConfigError;

/// Pipeline settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most messages in one batch (one database transaction).
    pub batch_size: usize,
    /// Longest wait for a batch to fill before it is processed anyway.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Most transactions one batch is stored in at once: a batch of several partitions is
    /// split by partition into up to this many, each with its own connection and offsets.
    /// From 2, a batch is stored behind the one in flight, so up to twice this many run.
    pub store_concurrency: usize,
    /// Most entities whose state the consumer remembers between batches, over all its
    /// partitions; `0` reads every entity's state from the EventDB in every batch
    /// (docs/architecture.md, "The state cache").
    pub state_cache_entities: usize,
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
            batch_size: 2000,
            batch_linger: Duration::from_millis(100),
            store_concurrency: 2,
            state_cache_entities: 50_000,
            topics_dir: PathBuf::from("topics"),
            shutdown_grace: Duration::from_secs(30),
            max_retry_backoff: Duration::from_secs(10),
        }
    }
}

impl PipelineConfig {
    /// Checks values serde cannot check, naming the key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.batch_size) {
            return Err(ConfigError::invalid(
                "pipeline.batch_size",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=64).contains(&self.store_concurrency) {
            return Err(ConfigError::invalid(
                "pipeline.store_concurrency",
                "must be between 1 and 64",
            ));
        }
        if self.state_cache_entities > 10_000_000 {
            return Err(ConfigError::invalid(
                "pipeline.state_cache_entities",
                "must be at most 10000000",
            ));
        }
        if self.batch_linger > Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "pipeline.batch_linger",
                "must be at most 60s",
            ));
        }
        if self.shutdown_grace < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "pipeline.shutdown_grace",
                "must be at least 1s",
            ));
        }
        if self.max_retry_backoff < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "pipeline.max_retry_backoff",
                "must be at least 10ms",
            ));
        }
        Ok(())
    }
}
