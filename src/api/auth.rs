//! Bearer-token authentication (RFC 6750) with JWTs verified against the configured keys, the
//! scope checks of the ESOZ Event Manager (docs/architecture.md, "ESOZ Event Manager"), and
//! minting of development tokens.
//!
//! Only the algorithms of the configured key kinds are accepted (HS256 for a secret, RS256 for
//! RSA keys, ES256 for P-256 keys); each key is tried only with its own algorithm, so a token
//! cannot switch an RSA public key into an HMAC secret, and `alg: none` never parses. A header
//! with `crit` is refused: this server implements no JWS extension, and RFC 7515 §4.1.11 makes
//! a token with a critical extension the recipient does not understand invalid.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::config::{invalid, AuthConfig, READ_SCOPE};
use super::error::ApiError;
use crate::config_error::ConfigError;

/// Who is calling, as far as the token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim.
    pub subject: Option<String>,
    scopes: Scopes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scopes {
    /// Authentication is disabled: everything is allowed.
    All,
    Granted(BTreeSet<String>),
}

impl Principal {
    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        match &self.scopes {
            Scopes::All => true,
            Scopes::Granted(s) => s.contains(scope),
        }
    }
}

struct VerifyingKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens and knows which scope each event type needs.
pub struct Authenticator {
    /// Empty when authentication is disabled.
    keys: Vec<VerifyingKey>,
    disabled: bool,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    event_type_scopes: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("disabled", &self.disabled)
            .field(
                "algorithms",
                &self.keys.iter().map(|k| k.alg).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Loads the configured keys. Without any key every token is refused (fail closed); see
    /// [`AuthConfig::require_key`] for the start-up check of `run`.
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        if !config.disabled {
            if let Some(secret) = &config.hs256_secret {
                keys.push(VerifyingKey {
                    kid: None,
                    alg: Algorithm::HS256,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                });
            }
            for (i, path) in config.rs256_public_key_files.iter().enumerate() {
                let key_name = format!("auth.rs256_public_key_files[{i}]");
                let pem = read_key_file(&key_name, path)?;
                let key = DecodingKey::from_rsa_pem(&pem)
                    .map_err(|e| invalid(&key_name, format!("not an RSA public key PEM: {e}")))?;
                keys.push(VerifyingKey {
                    kid: None,
                    alg: Algorithm::RS256,
                    key,
                });
            }
            for (i, path) in config.es256_public_key_files.iter().enumerate() {
                let key_name = format!("auth.es256_public_key_files[{i}]");
                let pem = read_key_file(&key_name, path)?;
                let key = DecodingKey::from_ec_pem(&pem)
                    .map_err(|e| invalid(&key_name, format!("not an EC public key PEM: {e}")))?;
                keys.push(VerifyingKey {
                    kid: None,
                    alg: Algorithm::ES256,
                    key,
                });
            }
            if let Some(path) = &config.jwks_file {
                keys.extend(load_jwks(path)?);
            }
        }
        Ok(Self {
            keys,
            disabled: config.disabled,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            event_type_scopes: config.event_type_scopes.clone(),
        })
    }

    /// Checks the `Authorization` header and returns the caller.
    pub fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Principal, ApiError> {
        if self.disabled {
            return Ok(Principal {
                subject: None,
                scopes: Scopes::All,
            });
        }
        let Some(value) = authorization else {
            return Err(ApiError::Unauthorized {
                invalid_token: false,
                message: "a bearer token is required".into(),
            });
        };
        let value = value.to_str().map_err(|_| malformed())?;
        let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized {
                invalid_token: false,
                message: "only the Bearer authentication scheme is supported".into(),
            });
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(malformed());
        }
        let claims = self.verify(token)?;
        Ok(Principal {
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            scopes: Scopes::Granted(scopes_of(&claims)),
        })
    }

    fn verify(&self, token: &str) -> Result<Map<String, Value>, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed())?;
        refuse_critical_extensions(token)?;
        let candidates: Vec<&VerifyingKey> = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(invalid_token(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            )));
        }
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &key.key,
                &self.validation(key.alg),
            ) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = Some(e),
                Err(e) => return Err(invalid_token(describe(e.kind()))),
            }
        }
        Err(invalid_token(
            last.map(|e| describe(e.kind()))
                .unwrap_or_else(|| "the signature is invalid".into()),
        ))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        v
    }

    /// The extra scope needed to see events of `event_type`, if any.
    pub(crate) fn event_type_scope(&self, event_type: &str) -> Option<&str> {
        self.event_type_scopes.get(event_type).map(String::as_str)
    }

    /// Event types `principal` may not see.
    pub(crate) fn hidden_event_types(&self, principal: &Principal) -> Vec<String> {
        self.event_type_scopes
            .iter()
            .filter(|(_, scope)| !principal.has_scope(scope))
            .map(|(t, _)| t.clone())
            .collect()
    }
}

fn read_key_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

fn load_jwks(path: &Path) -> Result<Vec<VerifyingKey>, ConfigError> {
    const KEY: &str = "auth.jwks_file";
    let text = read_key_file(KEY, path)?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| invalid(KEY, format!("{} is not a JWKS: {e}", path.display())))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_))
            | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256), AlgorithmParameters::EllipticCurve(p))
            | (None, AlgorithmParameters::EllipticCurve(p))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => {
                return Err(invalid(
                    KEY,
                    format!("key {i}: only RSA (RS256) and P-256 (ES256) public keys are accepted"),
                ))
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| invalid(KEY, format!("key {i} is unusable: {e}")))?;
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err(invalid(KEY, "the key set is empty"));
    }
    Ok(keys)
}

/// Refuses a token whose JOSE header has a `crit` member: none of its possible extensions is
/// understood here (an empty or malformed `crit` is invalid as well).
fn refuse_critical_extensions(token: &str) -> Result<(), ApiError> {
    use base64::Engine as _;
    let encoded = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| malformed())?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    if header.contains_key("crit") {
        return Err(invalid_token(
            "the token's header lists critical extensions (crit), and none is supported".into(),
        ));
    }
    Ok(())
}

/// Scopes from `scope` (a space-separated string, RFC 8693) and `scp` (an array or a string).
fn scopes_of(claims: &Map<String, Value>) -> BTreeSet<String> {
    let mut scopes = BTreeSet::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
            Some(Value::Array(items)) => {
                scopes.extend(items.iter().filter_map(Value::as_str).map(str::to_owned))
            }
            _ => {}
        }
    }
    scopes
}

fn malformed() -> ApiError {
    invalid_token("the token is malformed".into())
}

fn invalid_token(message: String) -> ApiError {
    ApiError::Unauthorized {
        invalid_token: true,
        message,
    }
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidSignature => "the signature is invalid",
        ErrorKind::InvalidAudience => "the token is not meant for this audience",
        ErrorKind::InvalidIssuer => "the token has the wrong issuer",
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
        _ => "the token is malformed",
    }
    .into()
}

/// Middleware for the events API: a valid token with scope `event:read`, else 401 or 403.
/// The caller's [`Principal`] is left in the request extensions for the handlers.
pub(crate) async fn require_read_scope(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match auth.authenticate(request.headers().get(header::AUTHORIZATION)) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !principal.has_scope(READ_SCOPE) {
        return ApiError::InsufficientScope {
            scope: READ_SCOPE.into(),
        }
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// No HS256 secret to sign with.
    #[error("config key `auth.hs256_secret`: must be set to mint tokens")]
    NoSecret,
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Mints an HS256 token for development and tests, with the configured issuer and audience.
pub fn mint_token(
    config: &AuthConfig,
    scopes: &[String],
    ttl: Duration,
    subject: &str,
) -> Result<String, MintError> {
    let secret = config.hs256_secret.as_ref().ok_or(MintError::NoSecret)?;
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let mut claims = Map::new();
    claims.insert("sub".into(), subject.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl).into());
    claims.insert("scope".into(), scopes.join(" ").into());
    if let Some(iss) = &config.issuer {
        claims.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = &config.audience {
        claims.insert("aud".into(), aud.clone().into());
    }
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        }
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    fn unauthorized(r: Result<Principal, ApiError>) -> (bool, String) {
        match r {
            Err(ApiError::Unauthorized {
                invalid_token,
                message,
            }) => (invalid_token, message),
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn without_keys_every_token_is_refused_unless_disabled() {
        let auth = Authenticator::from_config(&AuthConfig::default()).unwrap();
        let token = mint_token(
            &config(),
            &["event:read".into()],
            Duration::from_secs(60),
            "x",
        )
        .unwrap();
        assert!(unauthorized(auth.authenticate(Some(&bearer(&token)))).0);
        let disabled = AuthConfig {
            disabled: true,
            ..AuthConfig::default()
        };
        let auth = Authenticator::from_config(&disabled).unwrap();
        assert!(auth.authenticate(None).unwrap().has_scope(READ_SCOPE));
    }

    #[test]
    fn minted_token_round_trips_with_scopes() {
        let c = config();
        let auth = Authenticator::from_config(&c).unwrap();
        let token = mint_token(
            &c,
            &["event:read".into(), "other".into()],
            Duration::from_secs(60),
            "me",
        )
        .unwrap();
        let p = auth.authenticate(Some(&bearer(&token))).unwrap();
        assert_eq!(p.subject.as_deref(), Some("me"));
        assert!(p.has_scope("event:read") && p.has_scope("other"));
        assert!(!p.has_scope("event:write"));
    }

    #[test]
    fn scp_array_is_accepted() {
        let mut claims = Map::new();
        claims.insert("scp".into(), serde_json::json!(["event:read"]));
        claims.insert("exp".into(), (chrono::Utc::now().timestamp() + 60).into());
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let auth = Authenticator::from_config(&config()).unwrap();
        assert!(auth
            .authenticate(Some(&bearer(&token)))
            .unwrap()
            .has_scope("event:read"));
    }

    #[test]
    fn missing_other_scheme_and_garbage_are_401() {
        let auth = Authenticator::from_config(&config()).unwrap();
        assert!(!unauthorized(auth.authenticate(None)).0);
        assert!(!unauthorized(auth.authenticate(Some(&HeaderValue::from_static("Basic eDp5")))).0);
        for bad in ["Bearer", "Bearer x.y.z", "Bearer abc"] {
            let (invalid, _) =
                unauthorized(auth.authenticate(Some(&HeaderValue::from_static(bad))));
            assert!(invalid, "{bad}");
        }
    }

    #[test]
    fn expired_and_wrong_secret_are_invalid_tokens() {
        let c = config();
        let auth = Authenticator::from_config(&c).unwrap();
        let mut claims = Map::new();
        claims.insert("scope".into(), "event:read".into());
        claims.insert("exp".into(), (chrono::Utc::now().timestamp() - 3600).into());
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let (_, message) = unauthorized(auth.authenticate(Some(&bearer(&expired))));
        assert!(message.contains("expired"), "{message}");

        let other = AuthConfig {
            hs256_secret: Some("another-secret-another-secret-1234".into()),
            ..AuthConfig::default()
        };
        let forged =
            mint_token(&other, &["event:read".into()], Duration::from_secs(60), "x").unwrap();
        let (_, message) = unauthorized(auth.authenticate(Some(&bearer(&forged))));
        assert!(message.contains("signature"), "{message}");
    }

    #[test]
    fn alg_none_is_rejected() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let exp = chrono::Utc::now().timestamp() + 60;
        let payload = b64.encode(format!(r#"{{"scope":"event:read","exp":{exp}}}"#));
        let auth = Authenticator::from_config(&config()).unwrap();
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            let (invalid, _) = unauthorized(auth.authenticate(Some(&bearer(&token))));
            assert!(invalid);
        }
    }

    #[test]
    fn event_type_scopes_hide_types() {
        let mut c = config();
        c.event_type_scopes
            .insert("Secret".into(), "event:secret:read".into());
        let auth = Authenticator::from_config(&c).unwrap();
        let token = mint_token(&c, &["event:read".into()], Duration::from_secs(60), "x").unwrap();
        let p = auth.authenticate(Some(&bearer(&token))).unwrap();
        assert_eq!(auth.hidden_event_types(&p), vec!["Secret".to_owned()]);
        assert_eq!(auth.event_type_scope("Secret"), Some("event:secret:read"));
        assert_eq!(auth.event_type_scope("StatusChangeEvent"), None);
    }
}
