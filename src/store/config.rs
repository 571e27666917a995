//! EventDB settings (`[database]`).

use std::time::Duration;

use serde::Deserialize;

use crate::config_error::ConfigError;

/// EventDB settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, e.g. `postgres://user@host:5432/eventdb`.
    pub url: String,
    /// Connection pool size.
    pub pool_size: usize,
    /// Timeout for connecting and for taking a connection from the pool.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@localhost:5432/eventdb".into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl DatabaseConfig {
    /// Checks values serde cannot check, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.starts_with("postgres://") && !self.url.starts_with("postgresql://") {
            return Err(ConfigError::invalid(
                "database.url",
                "must be a postgres:// or postgresql:// URL",
            ));
        }
        if self.url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::invalid(
                "database.url",
                "is not a valid PostgreSQL URL",
            ));
        }
        if !(1..=1024).contains(&self.pool_size) {
            return Err(ConfigError::invalid(
                "database.pool_size",
                "must be between 1 and 1024",
            ));
        }
        Ok(())
    }
}
