//! RFC 6750 over HTTP: 401 versus 403, and every key kind.

use std::path::PathBuf;

use base64::Engine as _;
use event_manager::config::{ApiConfig, AuthConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{auth_config, TestApi, SECRET};

const CHALLENGE: &str = "Bearer realm=\"event-manager\"";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures")
        .join(name)
}

fn claims(scope: &str, exp_in: i64) -> Value {
    json!({"sub": "s", "scope": scope, "exp": chrono::Utc::now().timestamp() + exp_in})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(secret: &str, claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        claims,
        None,
    )
}

/// Asserts a 401 with the challenge, and `error="invalid_token"` when `invalid_token`.
async fn assert_401(api: &TestApi, token: Option<&str>, invalid_token: bool) {
    let response = api.request("/api/events", token).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token:?}");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "unauthorized");
    if invalid_token {
        assert!(
            challenge.starts_with(&format!("{CHALLENGE}, error=\"invalid_token\"")),
            "{challenge}"
        );
    } else {
        assert_eq!(challenge, CHALLENGE);
    }
    if let Some(token) = token {
        assert!(!challenge.contains(token) && !body.to_string().contains(token));
    }
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_are_401() {
    let mut auth = auth_config();
    auth.audience = Some("event-manager".into());
    auth.issuer = Some("https://idp.example".into());
    let api = TestApi::start_with(ApiConfig::default(), auth).await;

    let good = json!({"scope": "event:read", "aud": "event-manager", "iss": "https://idp.example",
                      "exp": chrono::Utc::now().timestamp() + 60});
    let (code, _) = api.get_as("/api/events", Some(&hs256(SECRET, &good))).await;
    assert_eq!(code, StatusCode::OK);
    // The minted token carries the configured issuer and audience.
    let (code, _) = api.get("/api/events").await;
    assert_eq!(code, StatusCode::OK);

    assert_401(&api, None, false).await;
    let response = api
        .http
        .get(api.url("/api/events"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_401(&api, Some("not-a-jwt"), true).await;
    assert_401(&api, Some("a.b.c"), true).await;

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    // Wrong signature, expired, wrong audience, wrong issuer, no expiry, not yet valid.
    assert_401(
        &api,
        Some(&hs256("another-secret-of-enough-length-123456", &good)),
        true,
    )
    .await;
    assert_401(
        &api,
        Some(&hs256(
            SECRET,
            &with("exp", json!(chrono::Utc::now().timestamp() - 120)),
        )),
        true,
    )
    .await;
    assert_401(
        &api,
        Some(&hs256(SECRET, &with("aud", json!("someone-else")))),
        true,
    )
    .await;
    assert_401(
        &api,
        Some(&hs256(SECRET, &with("iss", json!("https://evil.example")))),
        true,
    )
    .await;
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_401(&api, Some(&hs256(SECRET, &no_exp)), true).await;
    assert_401(
        &api,
        Some(&hs256(
            SECRET,
            &with("nbf", json!(chrono::Utc::now().timestamp() + 3600)),
        )),
        true,
    )
    .await;

    // alg: none, signed or not.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(good.to_string());
    assert_401(&api, Some(&format!("{header}.{payload}.")), true).await;
    // A tampered payload under a valid signature.
    let token = hs256(SECRET, &good);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = b64.encode(with("scope", json!("event:read event:admin")).to_string());
    assert_401(
        &api,
        Some(&format!("{}.{forged}.{}", parts[0], parts[2])),
        true,
    )
    .await;
}

#[tokio::test]
async fn valid_token_without_the_scope_is_403() {
    let api = TestApi::start().await;
    for scopes in [vec![], vec!["event:write"], vec!["event:readx", "read"]] {
        let token = api.token_with(&scopes);
        for path in [
            "/api/events",
            "/api/events/0190c0e0-0000-7000-8000-000000000000",
        ] {
            let response = api.request(path, Some(&token)).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{scopes:?}");
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer realm=\"event-manager\", error=\"insufficient_scope\", scope=\"event:read\""
            );
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["type"], "forbidden");
        }
    }
    // `scp` as an array counts too.
    let token = hs256(
        SECRET,
        &json!({"scp": ["profile", "event:read"], "exp": chrono::Utc::now().timestamp() + 60}),
    );
    let (code, _) = api.get_as("/api/events", Some(&token)).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn rs256_es256_and_jwks_keys_and_no_algorithm_confusion() {
    let auth = AuthConfig {
        rs256_public_key_files: vec![fixture("rsa_public.pem")],
        es256_public_key_files: vec![fixture("ec_public.pem")],
        ..AuthConfig::default()
    };
    let api = TestApi::start_with(ApiConfig::default(), auth).await;
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec_private.pem")).unwrap()).unwrap();
    let c = claims("event:read", 60);
    for token in [
        sign(Algorithm::RS256, &rsa, &c, None),
        sign(Algorithm::ES256, &ec, &c, None),
    ] {
        let (code, body) = api.get_as("/api/events", Some(&token)).await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    // The RSA public key used as an HMAC secret (the classic confusion attack).
    let public_pem = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        &c,
        None,
    );
    assert_401(&api, Some(&confused), true).await;
    // An algorithm of the right family that is not configured.
    assert_401(&api, Some(&sign(Algorithm::RS512, &rsa, &c, None)), true).await;
    // ES256 signature presented as RS256 and so on.
    let es = sign(Algorithm::ES256, &ec, &c, None);
    let mut parts: Vec<String> = es.split('.').map(str::to_owned).collect();
    parts[0] =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    assert_401(&api, Some(&parts.join(".")), true).await;

    // JWKS with a key id.
    let auth = AuthConfig {
        jwks_file: Some(fixture("jwks.json")),
        ..AuthConfig::default()
    };
    let api = TestApi::start_with(ApiConfig::default(), auth).await;
    let (code, _) = api
        .get_as(
            "/api/events",
            Some(&sign(Algorithm::RS256, &rsa, &c, Some("rsa-1"))),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api
        .get_as("/api/events", Some(&sign(Algorithm::RS256, &rsa, &c, None)))
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_401(
        &api,
        Some(&sign(Algorithm::RS256, &rsa, &c, Some("other"))),
        true,
    )
    .await;
    assert_401(&api, Some(&sign(Algorithm::ES256, &ec, &c, None)), true).await;
    assert_401(&api, Some(&hs256(SECRET, &c)), true).await;
}

#[tokio::test]
async fn operations_endpoints_need_no_token() {
    let api = TestApi::start().await;
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let response = api.request(path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[test]
fn token_command_prints_only_a_token_the_api_accepts() {
    let bin = env!("CARGO_BIN_EXE_event-manager");
    let output = std::process::Command::new(bin)
        .args([
            "token",
            "--scope",
            "event:read",
            "--ttl",
            "5m",
            "--subject",
            "ops",
        ])
        .env("EM_AUTH__HS256_SECRET", SECRET)
        .env_remove("EM_CONFIG")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.trim_end_matches('\n');
    assert_eq!(token.lines().count(), 1, "{stdout}");
    let auth = event_manager::api::auth::Authenticator::from_config(&auth_config()).unwrap();
    let header = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    let principal = auth.authenticate(Some(&header)).unwrap();
    assert_eq!(principal.subject.as_deref(), Some("ops"));
    assert!(principal.has_scope("event:read"));

    let output = std::process::Command::new(bin)
        .arg("token")
        .env_remove("EM_AUTH__HS256_SECRET")
        .env_remove("EM_CONFIG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("auth.hs256_secret"));
}

/// A correctly signed HS256 token whose header is exactly `header`.
fn hs256_with_header(header: &Value, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

#[tokio::test]
async fn critical_header_extensions_are_401() {
    // RFC 7515 §4.1.11: a `crit` extension the recipient does not understand (and this server
    // understands none) makes the token invalid, however well it is signed.
    let api = TestApi::start().await;
    let c = claims("event:read", 60);
    let plain = hs256_with_header(&json!({"alg": "HS256", "typ": "JWT"}), &c);
    let (code, body) = api.get_as("/api/events", Some(&plain)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for crit in [json!(["x"]), json!(["exp"]), json!([]), json!("x")] {
        let token = hs256_with_header(&json!({"alg": "HS256", "crit": crit, "x": 1}), &c);
        assert_401(&api, Some(&token), true).await;
    }
}
