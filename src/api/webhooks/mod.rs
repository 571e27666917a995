//! Webhook bridges: HTTP endpoints that authenticate and validate events and produce them into
//! Kafka, answering only after the broker acknowledged (docs/architecture.md, "Data flow"). The
//! pipeline then reads them like any other topic.
//!
//! - `POST /webhooks/sfs` — Smart Flow Sheet events ([`sfs`]).
//! - `GET|POST /webhooks/fhircast` — the FHIRcast subscriber callback ([`fhircast`]).
//!
//! Rejected requests produce nothing. Logs never contain bodies, keys, secrets or topics' ids.

pub mod config;
pub mod fhircast;
pub mod producer;
pub mod sfs;
mod unique_keys;

use std::fmt;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use self::config::WebhooksConfig;
use self::producer::{BridgeProducer, ProduceError};
use self::unique_keys::ParseError;
use crate::kafka::KafkaConfig;
use crate::metrics::WebhookMetrics;

/// Shared state of the bridges.
pub struct Bridges {
    config: WebhooksConfig,
    producer: Option<BridgeProducer>,
    metrics: WebhookMetrics,
}

impl fmt::Debug for Bridges {
    // The configuration holds keys and secrets: show only what is configured.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridges")
            .field("sfs_clinics", &self.config.sfs.clinics.len())
            .field(
                "fhircast_subscriptions",
                &self.config.fhircast.subscriptions.len(),
            )
            .finish()
    }
}

impl Bridges {
    /// Builds the bridges; the idempotent producer is created only when a bridge is configured.
    pub fn new(
        config: &WebhooksConfig,
        kafka: &KafkaConfig,
        metrics: WebhookMetrics,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = if config.any_configured() {
            Some(BridgeProducer::new(config, kafka)?)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            producer,
            metrics,
        })
    }

    /// Produces `payload` to `topic` and waits for the acknowledgement.
    async fn produce(
        &self,
        bridge: &'static str,
        topic: &str,
        key: &[u8],
        payload: &[u8],
    ) -> Result<(), Rejection> {
        let Some(producer) = &self.producer else {
            // Unreachable in practice: requests are only accepted when a bridge is configured.
            return Err(Rejection::unavailable(&self.config));
        };
        let timer = self
            .metrics
            .produce_duration
            .with_label_values(&[bridge])
            .start_timer();
        let result = producer.send(topic, key, payload).await;
        timer.observe_duration();
        result.map_err(|e: ProduceError| {
            tracing::warn!(bridge, error = %e, "the broker did not take a webhook event");
            Rejection::unavailable(&self.config)
        })
    }

    fn count(&self, bridge: &str, result: &str) {
        self.metrics
            .requests
            .with_label_values(&[bridge, result])
            .inc();
    }

    /// Counts the outcome of a produce-type request and answers it: `accepted` with `ok`, or
    /// the rejection's own status and error object.
    fn respond(&self, bridge: &str, outcome: Result<(), Rejection>, ok: StatusCode) -> Response {
        match outcome {
            Ok(()) => {
                self.count(bridge, "accepted");
                ok.into_response()
            }
            Err(rejection) => {
                self.count(bridge, rejection.result());
                rejection.into_response()
            }
        }
    }
}

/// The routes of both bridges.
pub fn router(bridges: Arc<Bridges>) -> Router {
    Router::new()
        .route("/webhooks/sfs", post(sfs::receive))
        .route(
            "/webhooks/fhircast",
            get(fhircast::verify).post(fhircast::notify),
        )
        .with_state(bridges)
}

/// A refused request: status, Error object, and the metrics label.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl Rejection {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_event", message)
    }

    fn unavailable(config: &WebhooksConfig) -> Self {
        Self {
            retry_after: Some(config.retry_after.as_secs().max(1)),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event could not be stored now; retry later",
            )
        }
    }

    /// The `result` label of `event_manager_webhook_requests_total`.
    fn result(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "error",
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "type": self.kind, "message": self.message } }));
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Checks the content type, reads the body within the limit and parses a JSON object in which
/// no key appears twice in one object (an authentication field given twice is ambiguous).
async fn read_json_object(
    config: &WebhooksConfig,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Map<String, Value>), Rejection> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let json = media_type.as_deref().is_some_and(|m| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    });
    if !json {
        return Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    let too_large = || {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body must be at most {} bytes", config.max_body_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_body_bytes as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, config.max_body_bytes)
        .await
        .map_err(|_| too_large())?;
    let invalid =
        |message: String| Rejection::new(StatusCode::BAD_REQUEST, "invalid_json", message);
    match unique_keys::parse(&bytes) {
        Ok(Value::Object(map)) => Ok((bytes, map)),
        Ok(_) => Err(Rejection::bad("the body must be a JSON object")),
        Err(ParseError::Duplicate { key, line, column }) => Err(invalid(format!(
            "the body repeats the key `{key}` in one object (line {line}, column {column}); \
             duplicated keys are ambiguous and refused"
        ))),
        Err(ParseError::Syntax { line, column }) => Err(invalid(format!(
            "the body is not valid JSON (line {line}, column {column})"
        ))),
    }
}

/// A required non-empty string field.
fn required_str<'a>(
    map: &'a Map<String, Value>,
    path: &str,
    name: &str,
) -> Result<&'a str, Rejection> {
    match map.get(name) {
        None | Some(Value::Null) => Err(Rejection::bad(format!("`{path}` is missing"))),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(Rejection::bad(format!(
            "`{path}` must be a non-empty string"
        ))),
    }
}

/// Index of the entry whose secret equals `given`; every entry is compared in constant time.
fn find_secret<'a, T>(entries: impl Iterator<Item = (&'a [u8], T)>, given: &[u8]) -> Option<T> {
    let mut hit = u64::MAX;
    let mut values = Vec::new();
    for (i, (secret, value)) in entries.enumerate() {
        let equal = secret.ct_eq(given);
        hit = u64::conditional_select(&hit, &(i as u64), equal);
        values.push(Some(value));
    }
    usize::try_from(hit)
        .ok()
        .and_then(|i| values.get_mut(i))
        .and_then(Option::take)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_found_by_value() {
        let entries = [(b"k1".as_slice(), "a"), (b"k2".as_slice(), "b")];
        assert_eq!(find_secret(entries.iter().copied(), b"k2"), Some("b"));
        assert_eq!(find_secret(entries.iter().copied(), b"k3"), None);
        assert_eq!(find_secret(entries.iter().copied(), b"k"), None);
    }
}
