//! EventDB settings (`[database]`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::tls::{self, TlsSettings};
use crate::config_error::ConfigError;

/// EventDB settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, e.g. `postgres://user@host:5432/eventdb`, read when the configuration is.
    pub url: DatabaseUrl,
    /// Connection pool size.
    pub pool_size: usize,
    /// Timeout for connecting and for taking a connection from the pool.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::parse("postgres://postgres@localhost:5432/eventdb")
                .expect("the default URL is valid"),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl DatabaseConfig {
    /// Checks values serde cannot check, naming the key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1024).contains(&self.pool_size) {
            return Err(ConfigError::invalid(
                "database.pool_size",
                "must be between 1 and 1024",
            ));
        }
        Ok(())
    }
}

/// A PostgreSQL URL, read once: tokio-postgres's settings and the TLS parameters taken out of it
/// (README.md, "Connecting to a secured cluster"). Its files are read when the store connects.
/// Shown (`Display`, `Debug`) with its password hidden.
#[derive(Clone)]
pub struct DatabaseUrl {
    text: String,
    postgres: tokio_postgres::Config,
    tls: TlsSettings,
}

impl DatabaseUrl {
    /// Reads a `postgres://` or `postgresql://` URL; the error is the reason alone and never
    /// contains the URL (it may hold a password).
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with("postgres://") && !text.starts_with("postgresql://") {
            return Err("must be a postgres:// or postgresql:// URL".to_owned());
        }
        let (postgres, tls) = tls::parse_url(text)?;
        Ok(Self {
            text: text.to_owned(),
            postgres,
            tls,
        })
    }

    /// The URL as written, password included: for connecting other tools, never for logs.
    pub(crate) fn expose(&self) -> &str {
        &self.text
    }

    /// tokio-postgres's settings (without the TLS parameters).
    pub(crate) fn postgres(&self) -> &tokio_postgres::Config {
        &self.postgres
    }

    /// The TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`).
    pub(crate) fn tls(&self) -> &TlsSettings {
        &self.tls
    }
}

impl FromStr for DatabaseUrl {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text).map_err(|reason| ConfigError::invalid("database.url", reason))
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl PartialEq<&str> for DatabaseUrl {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl fmt::Display for DatabaseUrl {
    /// The URL with the password of its user part and a `password` parameter shown as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted(&self.text))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", redacted(&self.text))
    }
}

/// `text` with the password of `user:password@` and of a `password=` parameter replaced.
fn redacted(text: &str) -> String {
    let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=***".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => path.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let url = DatabaseUrl::parse(
            "postgres://em:s3cret@db:5432/eventdb?sslmode=require&password=other&application_name=x",
        )
        .unwrap();
        let shown =
            "postgres://em:***@db:5432/eventdb?sslmode=require&password=***&application_name=x";
        assert_eq!(url.to_string(), shown);
        assert_eq!(format!("{url:?}"), format!("DatabaseUrl({shown:?})"));
        assert!(url.expose().contains("s3cret"));
        assert_eq!(url.postgres().get_password(), Some(&b"other"[..]));
        assert_eq!(
            DatabaseUrl::parse("postgresql://em@db/eventdb")
                .unwrap()
                .to_string(),
            "postgresql://em@db/eventdb"
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_it() {
        for (url, reason) in [
            ("mysql://em:s3cret@db/x", "postgres:// or postgresql://"),
            ("postgres://em:s3cret@db/x?sslmode=sometimes", "sslmode"),
        ] {
            let error = DatabaseUrl::parse(url).unwrap_err();
            assert!(error.contains(reason), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
    }
}
