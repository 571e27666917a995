//! FHIR look-up of missing statuses: a DK eHealth status context event often carries no status,
//! so the status of the version it announces is read from the FHIR server
//! (`GET {resourceReference}/_history/{resourceVersion}`, `Accept: application/fhir+json`).
//!
//! Only references under a configured server prefix are read (the bearer token must never be
//! sent to a host a message names), rewritten to the base URL actually reachable. Failures are
//! retried with backoff; what still fails becomes a dead letter with a `lookup_*` reason.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config_error::ConfigError;
use crate::formats::{DecodeError, DecodeErrorKind, StatusLookup};
use crate::secret::Secret;

/// `[fhir]`: where and how statuses are looked up. Disabled while `servers` is empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirConfig {
    /// Reference prefix (as messages name resources) → base URL actually reachable; map a prefix
    /// to itself when it is reachable as is. References under no prefix are not read.
    pub servers: BTreeMap<String, String>,
    /// A static bearer token.
    pub bearer_token: Option<Secret>,
    /// OAuth2 client credentials (instead of `bearer_token`).
    pub oauth2: Option<OAuth2Config>,
    /// Timeout of one request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most look-ups in flight at once.
    pub concurrency: usize,
    /// Attempts per look-up (the first one included).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
}

impl Default for FhirConfig {
    fn default() -> Self {
        Self {
            servers: BTreeMap::new(),
            bearer_token: None,
            oauth2: None,
            timeout: Duration::from_secs(5),
            concurrency: 8,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// `[fhir.oauth2]`: the client-credentials grant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Token endpoint.
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Secret,
    /// Scope to ask for, if the server needs one.
    #[serde(default)]
    pub scope: Option<String>,
}

impl FhirConfig {
    /// Whether look-ups are configured.
    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    /// Checks values serde cannot check.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        let is_http = |u: &str| {
            reqwest::Url::parse(u)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        };
        for (prefix, base) in &self.servers {
            if !is_http(prefix) {
                return Err(invalid(
                    &format!("fhir.servers.{prefix}"),
                    "the reference prefix must be an absolute http(s) URL",
                ));
            }
            if !is_http(base) {
                return Err(invalid(
                    &format!("fhir.servers.{prefix}"),
                    "the base URL must be an absolute http(s) URL",
                ));
            }
        }
        if self.bearer_token.is_some() && self.oauth2.is_some() {
            return Err(invalid(
                "fhir.bearer_token",
                "set either bearer_token or [fhir.oauth2], not both",
            ));
        }
        if self
            .bearer_token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return Err(invalid("fhir.bearer_token", "must not be empty"));
        }
        if let Some(o) = &self.oauth2 {
            if !is_http(&o.token_url) {
                return Err(invalid(
                    "fhir.oauth2.token_url",
                    "must be an absolute http(s) URL",
                ));
            }
            if o.client_id.trim().is_empty() {
                return Err(invalid("fhir.oauth2.client_id", "must not be empty"));
            }
            if o.client_secret.expose().is_empty() {
                return Err(invalid("fhir.oauth2.client_secret", "must not be empty"));
            }
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(120)).contains(&self.timeout) {
            return Err(invalid("fhir.timeout", "must be between 10ms and 120s"));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(invalid("fhir.concurrency", "must be between 1 and 256"));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(invalid("fhir.max_attempts", "must be between 1 and 10"));
        }
        if self.retry_backoff > Duration::from_secs(60) {
            return Err(invalid("fhir.retry_backoff", "must be at most 60s"));
        }
        Ok(())
    }
}

/// Why a status could not be looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LookupError {
    /// The server does not have that resource version (404/410).
    #[error("the resource version was not found")]
    NotFound,
    /// Every attempt timed out.
    #[error("the FHIR server did not answer in time")]
    Timeout,
    /// Anything else; the detail never contains references or tokens.
    #[error("{0}")]
    Failed(String),
}

impl LookupError {
    /// Label value for `event_manager_status_lookups_total`.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            LookupError::NotFound => "not_found",
            LookupError::Timeout => "timeout",
            LookupError::Failed(_) => "failed",
        }
    }

    /// The dead-letter reason for this failure.
    pub(crate) fn into_decode_error(self) -> DecodeError {
        let kind = match self {
            LookupError::NotFound => DecodeErrorKind::LookupNotFound,
            LookupError::Timeout => DecodeErrorKind::LookupTimeout,
            LookupError::Failed(_) => DecodeErrorKind::LookupFailed,
        };
        DecodeError::new(kind, format!("status look-up: {self}"))
    }

    fn retryable(&self) -> bool {
        !matches!(self, LookupError::NotFound)
    }
}

/// Something that can tell the status of a resource version.
pub(crate) trait StatusSource: Send + Sync {
    /// The `status` of the version `lookup` names.
    fn status<'a>(&'a self, lookup: &'a StatusLookup)
        -> BoxFuture<'a, Result<String, LookupError>>;
}

/// Reads statuses from FHIR servers over HTTP.
pub(crate) struct FhirStatusClient {
    http: reqwest::Client,
    config: FhirConfig,
    token: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for FhirStatusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirStatusClient")
            .field("servers", &self.config.servers.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// One attempt's failure, and whether a fresh token might help.
enum Attempt {
    Error(LookupError),
    Unauthorized,
}

impl FhirStatusClient {
    /// Builds the client; `None` when look-ups are not configured.
    pub(crate) fn from_config(config: &FhirConfig) -> Result<Option<Self>, reqwest::Error> {
        if !config.enabled() {
            return Ok(None);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()?;
        Ok(Some(Self {
            http,
            config: config.clone(),
            token: Mutex::new(None),
        }))
    }

    /// The reachable URL of a reference's version, or why it may not be read.
    pub(crate) fn url_for(&self, lookup: &StatusLookup) -> Result<String, LookupError> {
        rewrite(&self.config.servers, &lookup.history_url()).ok_or_else(|| {
            LookupError::Failed("the resource reference is under no configured FHIR server".into())
        })
    }

    async fn bearer(&self) -> Result<Option<String>, LookupError> {
        if let Some(token) = &self.config.bearer_token {
            return Ok(Some(token.expose().to_owned()));
        }
        let Some(oauth) = &self.config.oauth2 else {
            return Ok(None);
        };
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(Some(token.clone()));
            }
        }
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", oauth.client_id.as_str()),
            ("client_secret", oauth.client_secret.expose()),
        ];
        if let Some(scope) = &oauth.scope {
            form.push(("scope", scope.as_str()));
        }
        let response = self
            .http
            .post(&oauth.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error("token request", &e))?;
        if !response.status().is_success() {
            return Err(LookupError::Failed(format!(
                "token endpoint answered {}",
                response.status().as_u16()
            )));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|_| LookupError::Failed("token endpoint answered no access_token".into()))?;
        // Renew a little early so that a token never expires in flight.
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(300));
        let until =
            Instant::now() + lifetime.saturating_sub(Duration::from_secs(30).min(lifetime / 2));
        *cached = Some((body.access_token.clone(), until));
        Ok(Some(body.access_token))
    }

    async fn attempt(&self, url: &str) -> Result<String, Attempt> {
        let mut request = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/fhir+json");
        if let Some(token) = self.bearer().await.map_err(Attempt::Error)? {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Attempt::Error(transport_error("read", &e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Err(Attempt::Error(LookupError::NotFound));
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(Attempt::Unauthorized);
        }
        if !status.is_success() {
            return Err(Attempt::Error(LookupError::Failed(format!(
                "FHIR server answered {}",
                status.as_u16()
            ))));
        }
        let resource: serde_json::Value = response.json().await.map_err(|e| {
            if e.is_timeout() {
                Attempt::Error(LookupError::Timeout)
            } else {
                Attempt::Error(LookupError::Failed("the answer is not JSON".into()))
            }
        })?;
        match resource.get("status") {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(Attempt::Error(LookupError::Failed(
                "the resource has no status".into(),
            ))),
        }
    }

    async fn read(&self, lookup: &StatusLookup) -> Result<String, LookupError> {
        let url = self.url_for(lookup)?;
        let mut last = LookupError::Failed("no attempt made".into());
        for attempt in 0..self.config.max_attempts {
            if attempt > 0 {
                let factor = 1u32 << (attempt - 1).min(10);
                tokio::time::sleep(self.config.retry_backoff.saturating_mul(factor)).await;
            }
            match self.attempt(&url).await {
                Ok(status) => return Ok(status),
                Err(Attempt::Unauthorized) => {
                    // A revoked or expired token: fetch a new one for the next attempt.
                    *self.token.lock().await = None;
                    last = LookupError::Failed("FHIR server answered 401".into());
                }
                Err(Attempt::Error(e)) if !e.retryable() => return Err(e),
                Err(Attempt::Error(e)) => last = e,
            }
        }
        Err(last)
    }
}

impl StatusSource for FhirStatusClient {
    fn status<'a>(
        &'a self,
        lookup: &'a StatusLookup,
    ) -> BoxFuture<'a, Result<String, LookupError>> {
        Box::pin(self.read(lookup))
    }
}

/// Classifies a transport error without its text (which can contain the URL).
fn transport_error(what: &str, e: &reqwest::Error) -> LookupError {
    if e.is_timeout() {
        LookupError::Timeout
    } else if e.is_connect() {
        LookupError::Failed(format!("{what}: cannot connect to the server"))
    } else {
        LookupError::Failed(format!("{what}: transport error"))
    }
}

/// Rewrites `url` from the longest matching reference prefix to its base URL. A prefix matches
/// only at a path boundary, and the rest may not climb out of it.
fn rewrite(servers: &BTreeMap<String, String>, url: &str) -> Option<String> {
    let (prefix, base) = servers
        .iter()
        .filter(|(prefix, _)| {
            let prefix = prefix.trim_end_matches('/');
            url.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|(prefix, _)| prefix.len())?;
    let rest = &url[prefix.trim_end_matches('/').len()..];
    if rest.split('/').any(|s| s == ".." || s == ".") || rest.contains(['?', '#', '\\']) {
        return None;
    }
    Some(format!("{}{rest}", base.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers() -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "https://ehealth.example/fhir".into(),
                "http://proxy:8080/fhir/".into(),
            ),
            (
                "https://ehealth.example/fhir/special".into(),
                "http://special/".into(),
            ),
        ])
    }

    #[test]
    fn rewrites_under_the_longest_prefix_only_at_a_boundary() {
        let s = servers();
        assert_eq!(
            rewrite(&s, "https://ehealth.example/fhir/CarePlan/1/_history/2").as_deref(),
            Some("http://proxy:8080/fhir/CarePlan/1/_history/2")
        );
        assert_eq!(
            rewrite(&s, "https://ehealth.example/fhir/special/X/1").as_deref(),
            Some("http://special/X/1")
        );
        assert_eq!(
            rewrite(&s, "https://ehealth.example/fhirX/CarePlan/1"),
            None
        );
        assert_eq!(rewrite(&s, "https://evil.example/fhir/CarePlan/1"), None);
        assert_eq!(rewrite(&s, "https://ehealth.example/fhir/../admin"), None);
        assert_eq!(
            rewrite(&s, "https://ehealth.example/fhir/CarePlan/1?x=1"),
            None
        );
    }

    #[test]
    fn errors_map_to_dead_letter_reasons() {
        assert_eq!(
            LookupError::NotFound.into_decode_error().kind.as_str(),
            "lookup_not_found"
        );
        assert_eq!(
            LookupError::Timeout.into_decode_error().kind.as_str(),
            "lookup_timeout"
        );
        assert_eq!(
            LookupError::Failed("x".into())
                .into_decode_error()
                .kind
                .as_str(),
            "lookup_failed"
        );
    }

    #[test]
    fn config_is_validated_and_secrets_are_redacted() {
        let mut c = FhirConfig {
            servers: servers(),
            bearer_token: Some(Secret::new("t0ken")),
            ..FhirConfig::default()
        };
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("t0ken"));
        c.servers.insert("not a url".into(), "http://x".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("fhir.servers.not a url"));
        c.servers.remove("not a url");
        c.concurrency = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("fhir.concurrency"));
    }
}
