//! The FHIRcast subscriber callback `/webhooks/fhircast` (docs/architecture.md, "FHIRcast").
//!
//! - `GET` — the hub's intent verification: `hub.mode` `subscribe`|`unsubscribe` with
//!   `hub.topic` and `hub.challenge` is answered with the challenge (200, text/plain) for a
//!   configured topic only (404 otherwise, 400 for missing parameters or a challenge that is
//!   not 1–256 characters of `A-Za-z0-9._~-+/=`); `hub.mode=denied` (with
//!   `hub.reason`) is logged and acknowledged (200).
//! - `POST` — a notification `{timestamp, id, event: {hub.topic, hub.event, context}}`. Its
//!   `hub.topic` must be configured (else 403); when the subscription has a secret, the
//!   `X-Hub-Signature` (`sha256=<hex>`, also sha384/sha512) must be its HMAC of the body. It is
//!   produced unchanged to the FHIRcast topic, keyed by `hub.topic` so that a session stays in
//!   order, and answered 202 once the broker acknowledged (503 with `Retry-After` otherwise).
//!
//! `hub.topic` identifies a session and is unguessable by design: it is compared in constant
//! time and never logged (the subscription's configured name is).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};

use super::config::FhircastSubscription;
use super::{find_secret, read_json_object, required_str, Bridges, Rejection};

const BRIDGE: &str = "fhircast";

/// The signature header (WebSub style).
pub(crate) const SIGNATURE_HEADER: &str = "x-hub-signature";

impl Bridges {
    /// The subscription of a `hub.topic` (constant-time comparison), with its name.
    fn subscription(&self, hub_topic: &str) -> Option<(&str, &FhircastSubscription)> {
        find_secret(
            self.config
                .fhircast
                .subscriptions
                .iter()
                .map(|(name, s)| (s.hub_topic.as_bytes(), (name.as_str(), s))),
            hub_topic.as_bytes(),
        )
    }
}

/// The longest `hub.challenge` echoed back.
pub(crate) const MAX_CHALLENGE: usize = 256;

/// A challenge is echoed verbatim, so only a bounded random-looking token is: unreserved URL
/// characters and those of base64, nothing a browser could read as markup.
fn challenge_acceptable(challenge: &str) -> bool {
    challenge.len() <= MAX_CHALLENGE
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-+/=".contains(&b))
}

/// `GET`: intent verification.
pub async fn verify(
    State(bridges): State<Arc<Bridges>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    match verification(&bridges, query) {
        Ok((result, response)) => {
            bridges.count(BRIDGE, result);
            response
        }
        Err(rejection) => {
            bridges.count(BRIDGE, rejection.result());
            rejection.into_response()
        }
    }
}

fn verification(
    bridges: &Bridges,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<(&'static str, Response), Rejection> {
    let Query(params) = query.map_err(|_| Rejection::bad("the query string cannot be read"))?;
    let param = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Rejection::bad(format!("query parameter `{name}` is missing")))
    };
    let mode = param("hub.mode")?;
    let topic = param("hub.topic")?;
    if !matches!(mode, "subscribe" | "unsubscribe" | "denied") {
        return Err(Rejection::bad(
            "`hub.mode` must be subscribe, unsubscribe or denied",
        ));
    }
    let not_found = || {
        Rejection::new(
            StatusCode::NOT_FOUND,
            "unknown_topic",
            "this subscriber has no subscription for that hub.topic",
        )
    };
    if mode == "denied" {
        let (name, _) = bridges.subscription(topic).ok_or_else(not_found)?;
        // hub.reason is the hub's text, not patient data, but may be long: bounded.
        let reason: String = params
            .get("hub.reason")
            .map(|r| r.chars().take(200).collect())
            .unwrap_or_default();
        tracing::warn!(
            subscription = name,
            reason,
            "the FHIRcast hub denied the subscription"
        );
        return Ok(("denied", StatusCode::OK.into_response()));
    }
    let challenge = param("hub.challenge")?;
    if !challenge_acceptable(challenge) {
        return Err(Rejection::bad(format!(
            "`hub.challenge` must be 1 to {MAX_CHALLENGE} characters of A-Z a-z 0-9 . _ ~ - + / ="
        )));
    }
    if let Some(lease) = params.get("hub.lease_seconds") {
        if lease.parse::<u64>().is_err() {
            return Err(Rejection::bad(
                "`hub.lease_seconds` must be a non-negative integer",
            ));
        }
    }
    let (name, _) = bridges.subscription(topic).ok_or_else(not_found)?;
    tracing::info!(subscription = name, mode, "FHIRcast intent verified");
    let response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        challenge.to_owned(),
    )
        .into_response();
    Ok(("verified", response))
}

/// `POST`: a notification.
pub(crate) async fn notify(
    State(bridges): State<Arc<Bridges>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = accept(&bridges, &headers, body).await;
    bridges.respond(BRIDGE, outcome, StatusCode::ACCEPTED)
}

async fn accept(bridges: &Bridges, headers: &HeaderMap, body: Body) -> Result<(), Rejection> {
    let (bytes, notification) = read_json_object(&bridges.config, headers, body).await?;
    let event = match notification.get("event") {
        None | Some(Value::Null) => return Err(Rejection::bad("`event` is missing")),
        Some(Value::Object(e)) => e,
        Some(_) => return Err(Rejection::bad("`event` must be an object")),
    };
    let topic = required_str(event, "event.hub.topic", "hub.topic")?;
    let (_, subscription) = bridges.subscription(topic).ok_or_else(|| {
        Rejection::new(
            StatusCode::FORBIDDEN,
            "unknown_topic",
            "this subscriber has no subscription for that hub.topic",
        )
    })?;
    if let Some(secret) = &subscription.secret {
        let signature = headers
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Rejection::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_signature",
                    "the X-Hub-Signature header is missing",
                )
            })?;
        if !signature_valid(secret.expose().as_bytes(), &bytes, signature) {
            return Err(Rejection::new(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "the X-Hub-Signature does not match the body",
            ));
        }
    }
    required_str(event, "event.hub.event", "hub.event")?;
    required_str(&notification, "id", "id")?;
    // The timestamp's format is not checked: even the specification's examples get it wrong,
    // and the decoder falls back to the receive time rather than lose a context change.
    match notification.get("timestamp") {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(Rejection::bad("`timestamp` must be a string")),
    }
    match event.get("context") {
        None | Some(Value::Null) | Some(Value::Array(_)) => {}
        Some(_) => return Err(Rejection::bad("`event.context` must be an array")),
    }
    bridges
        .produce(
            BRIDGE,
            &bridges.config.fhircast.topic,
            topic.as_bytes(),
            &bytes,
        )
        .await
}

/// Checks `sha256=<hex>` (or sha384/sha512) against the HMAC of `body`, in constant time.
pub(crate) fn signature_valid(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some((algorithm, hex)) = header.trim().split_once('=') else {
        return false;
    };
    let Some(given) = decode_hex(hex) else {
        return false;
    };
    match algorithm.to_ascii_lowercase().as_str() {
        "sha256" => check::<Hmac<Sha256>>(secret, body, &given),
        "sha384" => check::<Hmac<Sha384>>(secret, body, &given),
        "sha512" => check::<Hmac<Sha512>>(secret, body, &given),
        _ => false,
    }
}

fn check<M: Mac + KeyInit>(secret: &[u8], body: &[u8], given: &[u8]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(given).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    hex.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
        mac.update(body);
        let bytes = mac.finalize().into_bytes();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    }

    #[test]
    fn challenges() {
        assert!(challenge_acceptable("meu3we944ix80ox"));
        assert!(challenge_acceptable("a.b_c~d-e+f/g="));
        assert!(challenge_acceptable(&"c".repeat(MAX_CHALLENGE)));
        assert!(!challenge_acceptable(&"c".repeat(MAX_CHALLENGE + 1)));
        for bad in ["<script>", "a b", "a\"b", "é", "a\n", "a&b", "a%3C"] {
            assert!(!challenge_acceptable(bad), "{bad}");
        }
    }

    #[test]
    fn signatures() {
        let good = sign(b"s3cret", b"{}");
        assert!(signature_valid(b"s3cret", b"{}", &good));
        assert!(signature_valid(
            b"s3cret",
            b"{}",
            &good.to_uppercase().replace("SHA", "sha")
        ));
        assert!(!signature_valid(b"other", b"{}", &good));
        assert!(!signature_valid(b"s3cret", b"{ }", &good));
        assert!(!signature_valid(b"s3cret", b"{}", "sha256=zz"));
        assert!(!signature_valid(
            b"s3cret",
            b"{}",
            &good.replace("sha256", "md5")
        ));
        assert!(!signature_valid(b"s3cret", b"{}", "nonsense"));
    }
}
