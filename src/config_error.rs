//! The error every component's configuration reports: which key or file, and why. A leaf, so
//! that each component can validate its own section (see `docs/architecture.md`).

use std::path::PathBuf;

/// A configuration problem: which key, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// File path.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A key is unknown or has a bad value.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A topic rule file is wrong.
    #[error("topic rules {file}: {reason}")]
    Topic {
        /// File path (or directory).
        file: PathBuf,
        /// What is wrong, naming the topic.
        reason: String,
    },
}

impl ConfigError {
    /// An invalid value of `key`.
    pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}
