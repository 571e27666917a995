//! Settings of the HTTP server (`[http]`), the events API (`[api]`) and of its bearer-token authentication (`[auth]`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config_error::ConfigError;

/// The scope every caller of the events API needs (docs/architecture.md, "ESOZ Event Manager").
pub(crate) const READ_SCOPE: &str = "event:read";

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
        }
    }
}

/// Events API settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Longest period one list request may cover, in hours (ESOZ's
    /// `EVENTS_LIST_MAX_PERIOD_HOURS`, also accepted as that plain environment variable).
    pub events_list_max_period_hours: u32,
    /// Page size when the request gives none.
    pub default_page_size: u32,
    /// Largest `page_size` a request may ask for.
    pub max_page_size: u32,
    /// Attributes that get their own partial B-tree indexes on `events` (by time, and by new
    /// value and time), built by `run` in the background at start-up: for attributes that are
    /// rare, or whose single values (identifiers) are looked up. Without them such a filter
    /// reads every event of the window. A list, or comma-separated in the environment
    /// (`EM_API__INDEXED_ATTRIBUTES=employee_id,referral_id`).
    #[serde(deserialize_with = "names")]
    pub indexed_attributes: Vec<String>,
    /// Attributes whose `new_value` filter gets its own partial B-tree index on `events` (by
    /// new value and time), built like those of `indexed_attributes` (which get this index
    /// too): for an attribute in most events whose single values are looked up, where a rare
    /// value would otherwise mean reading much of the window. Default `["status"]`, the
    /// attribute the producers' status changes are about; an empty list
    /// (`EM_API__INDEXED_VALUES=`) builds none.
    #[serde(deserialize_with = "names")]
    pub indexed_values: Vec<String>,
    /// Events API queries (lists and single events) run at once by this process; more wait
    /// in turn, so that when the cores are busy the EventDB's CPU goes to ingestion first.
    /// Unset: half the cores this process may use, at least one ([`ApiConfig::query_slots`]).
    pub max_concurrent_queries: Option<u32>,
    /// Longest wait of a query for its turn; past it the request is answered 503 with
    /// `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub query_queue_timeout: Duration,
    /// Identical list queries that wait for a slot at once run once and share their answer
    /// (`QuerySlots::shared`); `false` runs every request's own query.
    pub share_queries: bool,
}

/// Most queries `api.max_concurrent_queries` may allow at once.
pub(crate) const MAX_CONCURRENT_QUERIES: u32 = 1024;
/// Longest `api.query_queue_timeout`.
pub(crate) const MAX_QUERY_QUEUE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest name accepted in `api.indexed_attributes` and `api.indexed_values`.
pub(crate) const MAX_INDEXED_ATTRIBUTE_LEN: usize = 64;

/// A list of names, or one string of comma-separated names (as environment variables give it).
fn names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Names::deserialize(d)? {
        Names::List(list) => list,
        Names::Text(text) => split_names(&text),
    })
}

/// The names of a comma-separated list, trimmed, empty ones left out: how an environment
/// variable gives `api.indexed_attributes` and `api.indexed_values`.
pub fn split_names(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            events_list_max_period_hours: 1,
            default_page_size: 50,
            max_page_size: 500,
            indexed_attributes: Vec::new(),
            indexed_values: vec!["status".to_owned()],
            max_concurrent_queries: None,
            query_queue_timeout: Duration::from_secs(5),
            share_queries: true,
        }
    }
}

impl ApiConfig {
    /// Checks values serde cannot check.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=24 * 366).contains(&self.events_list_max_period_hours) {
            return Err(invalid(
                "api.events_list_max_period_hours",
                "must be between 1 and 8784 (one year)",
            ));
        }
        if !(1..=10_000).contains(&self.max_page_size) {
            return Err(invalid("api.max_page_size", "must be between 1 and 10000"));
        }
        if !(1..=self.max_page_size).contains(&self.default_page_size) {
            return Err(invalid(
                "api.default_page_size",
                "must be between 1 and api.max_page_size",
            ));
        }
        if self
            .max_concurrent_queries
            .is_some_and(|n| !(1..=MAX_CONCURRENT_QUERIES).contains(&n))
        {
            return Err(invalid(
                "api.max_concurrent_queries",
                format!("must be between 1 and {MAX_CONCURRENT_QUERIES}"),
            ));
        }
        if self.query_queue_timeout.is_zero() || self.query_queue_timeout > MAX_QUERY_QUEUE_TIMEOUT
        {
            return Err(invalid(
                "api.query_queue_timeout",
                "must be more than 0s and at most 60s",
            ));
        }
        attribute_names("api.indexed_attributes", &self.indexed_attributes)?;
        attribute_names("api.indexed_values", &self.indexed_values)
    }

    /// How many queries may run at once: `api.max_concurrent_queries`, or half as many as
    /// this process has cores, at least one. Then, when the API and the pipeline share a
    /// machine with the EventDB, the API's busy backends take at most half its CPU and
    /// ingestion keeps the rest (measured with eight API backends on 2 cores: commit p99 30 s
    /// at half the maximum rate; with two and `status`'s values indexed, ingestion fell to
    /// 80 % of that rate; with one it kept it; docs/performance-log.md).
    pub fn query_slots(&self) -> usize {
        match self.max_concurrent_queries {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        }
    }

    /// Whether `name` has its own index by time (`api.indexed_attributes`), for the
    /// `attribute_name` filter alone.
    pub(crate) fn is_indexed(&self, name: &str) -> bool {
        self.indexed_attributes.iter().any(|a| a == name)
    }

    /// Whether `name` has its own index by new value and time (`api.indexed_values` or
    /// `api.indexed_attributes`), for the `attribute_name` + `new_value` filter.
    pub(crate) fn is_value_indexed(&self, name: &str) -> bool {
        self.is_indexed(name) || self.indexed_values.iter().any(|a| a == name)
    }

    /// The longest list period.
    pub(crate) fn max_period(&self) -> chrono::Duration {
        chrono::Duration::hours(i64::from(self.events_list_max_period_hours))
    }
}

/// Checks the attribute names of the list under `key`: each a name an index can carry, once.
fn attribute_names(key: &str, names: &[String]) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        let valid = (1..=MAX_INDEXED_ATTRIBUTE_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if !valid {
            return Err(invalid(
                key,
                format!(
                    "{name:?} is not an attribute name: 1 to {MAX_INDEXED_ATTRIBUTE_LEN} \
                     ASCII letters, digits, '_', '-', '.' or ':'"
                ),
            ));
        }
        if !seen.insert(name) {
            return Err(invalid(key, format!("{name:?} is listed twice")));
        }
    }
    Ok(())
}

/// Bearer-token (JWT) settings. At least one key must be configured for the API to start,
/// unless `disabled = true` is set explicitly (local use only).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Serve the API without authentication. Never in production.
    pub disabled: bool,
    /// Shared secret for HS256 tokens (at least 32 bytes). Also signs `event-manager token`.
    pub hs256_secret: Option<String>,
    /// PEM files with RSA public keys for RS256 tokens.
    pub rs256_public_key_files: Vec<PathBuf>,
    /// PEM files with P-256 public keys for ES256 tokens.
    pub es256_public_key_files: Vec<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`) with RSA (RS256) and P-256 (ES256) public keys.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Extra scope needed to see events of a type, by event type (e.g.
    /// `StatusChangeEvent = "event:status:read"`). Types not listed need only `event:read`.
    pub event_type_scopes: BTreeMap<String, String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            disabled: false,
            hs256_secret: None,
            rs256_public_key_files: Vec::new(),
            es256_public_key_files: Vec::new(),
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            event_type_scopes: BTreeMap::new(),
        }
    }
}

// The secret must never reach a log line through `{:?}` of the configuration.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("disabled", &self.disabled)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("rs256_public_key_files", &self.rs256_public_key_files)
            .field("es256_public_key_files", &self.es256_public_key_files)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("event_type_scopes", &self.event_type_scopes)
            .finish()
    }
}

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key as long as the hash output.
pub(crate) const MIN_HS256_SECRET_BYTES: usize = 32;

impl AuthConfig {
    /// Checks values serde cannot check (key files are read when the API starts).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.hs256_secret {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(invalid(
                    "auth.hs256_secret",
                    format!("must be at least {MIN_HS256_SECRET_BYTES} bytes long"),
                ));
            }
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(invalid("auth.leeway", "must be at most 5m"));
        }
        for (key, value) in [
            ("auth.issuer", &self.issuer),
            ("auth.audience", &self.audience),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(key, "must not be empty when set"));
            }
        }
        for (event_type, scope) in &self.event_type_scopes {
            if scope.trim().is_empty() || scope.contains(char::is_whitespace) {
                return Err(invalid(
                    &format!("auth.event_type_scopes.{event_type}"),
                    "must be one scope (non-empty, no spaces)",
                ));
            }
        }
        Ok(())
    }

    /// Fails, naming `auth.hs256_secret`, when no key is configured and authentication is not
    /// explicitly disabled: `run` must not serve an API that nobody can use (or that is open).
    pub fn require_key(&self) -> Result<(), ConfigError> {
        if self.disabled || self.has_keys() {
            return Ok(());
        }
        Err(invalid(
            "auth.hs256_secret",
            "no token verification key is configured: set auth.hs256_secret (or \
             auth.rs256_public_key_files, auth.es256_public_key_files, auth.jwks_file), \
             or set auth.disabled = true for local use without authentication",
        ))
    }

    /// Whether any verification key is configured.
    pub(crate) fn has_keys(&self) -> bool {
        self.hs256_secret.is_some()
            || !self.rs256_public_key_files.is_empty()
            || !self.es256_public_key_files.is_empty()
            || self.jwks_file.is_some()
    }
}

pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ApiConfig::default().validate().unwrap();
        AuthConfig::default().validate().unwrap();
        assert!(!AuthConfig::default().has_keys());
        let e = AuthConfig::default().require_key().unwrap_err().to_string();
        assert!(e.contains("auth.hs256_secret"), "{e}");
        let disabled = AuthConfig {
            disabled: true,
            ..AuthConfig::default()
        };
        disabled.require_key().unwrap();
    }

    #[test]
    fn bad_values_name_the_key() {
        let api = ApiConfig {
            default_page_size: 600,
            ..ApiConfig::default()
        };
        assert!(api
            .validate()
            .unwrap_err()
            .to_string()
            .contains("api.default_page_size"));
        let auth = AuthConfig {
            hs256_secret: Some("short".into()),
            ..AuthConfig::default()
        };
        assert!(auth
            .validate()
            .unwrap_err()
            .to_string()
            .contains("auth.hs256_secret"));
    }

    #[test]
    fn query_slots_are_bounded() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(ApiConfig::default().query_slots(), (cores / 2).max(1));
        let parse = |toml_text: &str| -> ApiConfig { toml::from_str(toml_text).unwrap() };
        let api = parse("max_concurrent_queries = 3\nquery_queue_timeout = \"250ms\"");
        api.validate().unwrap();
        assert_eq!(api.query_slots(), 3);
        assert_eq!(api.query_queue_timeout, Duration::from_millis(250));
        for (bad, key) in [
            ("max_concurrent_queries = 0", "api.max_concurrent_queries"),
            (
                "max_concurrent_queries = 1025",
                "api.max_concurrent_queries",
            ),
            ("query_queue_timeout = \"0s\"", "api.query_queue_timeout"),
            ("query_queue_timeout = \"61s\"", "api.query_queue_timeout"),
        ] {
            let e = parse(bad).validate().unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn indexed_attributes_are_names() {
        let parse = |toml_text: &str| -> ApiConfig { toml::from_str(toml_text).unwrap() };
        let list = parse(r#"indexed_attributes = ["employee_id", "referral.id"]"#);
        assert_eq!(list.indexed_attributes, ["employee_id", "referral.id"]);
        list.validate().unwrap();
        assert!(list.is_indexed("referral.id") && !list.is_indexed("status"));
        // An indexed attribute has the value index too; `status` has only that one by default.
        assert!(list.is_value_indexed("referral.id") && list.is_value_indexed("status"));
        let text = parse(r#"indexed_attributes = "employee_id, referral.id,""#);
        assert_eq!(text.indexed_attributes, list.indexed_attributes);
        // As the environment gives them: an empty value builds no value index.
        let none = parse(r#"indexed_values = """#);
        none.validate().unwrap();
        assert!(none.indexed_values.is_empty() && !none.is_value_indexed("status"));
        let values = parse(r#"indexed_values = "status,priority""#);
        values.validate().unwrap();
        assert!(values.is_value_indexed("priority") && !values.is_indexed("priority"));
        for bad in [
            vec!["it's".to_owned()],
            vec![String::new()],
            vec!["a b".to_owned()],
            vec!["x".repeat(MAX_INDEXED_ATTRIBUTE_LEN + 1)],
            vec!["status".to_owned(), "status".to_owned()],
        ] {
            let api = ApiConfig {
                indexed_attributes: bad.clone(),
                ..ApiConfig::default()
            };
            let e = api.validate().unwrap_err().to_string();
            assert!(e.contains("api.indexed_attributes"), "{bad:?}: {e}");
            let api = ApiConfig {
                indexed_values: bad.clone(),
                ..ApiConfig::default()
            };
            let e = api.validate().unwrap_err().to_string();
            assert!(e.contains("api.indexed_values"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let auth = AuthConfig {
            hs256_secret: Some("s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t".into()),
            ..AuthConfig::default()
        };
        assert!(!format!("{auth:?}").contains("s3cr3t"));
    }
}
