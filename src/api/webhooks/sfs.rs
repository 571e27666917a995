//! `POST /webhooks/sfs`: Smart Flow Sheet webhook events (docs/architecture.md, "Smart Flow
//! Sheet").
//!
//! The Event object `{clinicApiKey, eventType, object}` is authenticated by its `clinicApiKey`
//! (compared in constant time with `[webhooks.sfs] clinics`), validated, and produced to the
//! SFS topic with the key replaced by `clinicId`: secrets never reach Kafka. The message key is
//! the entity (`object.hospitalizationId`, else `object.id`, else the clinic) so that the events
//! of one hospitalization stay in order. 200 once the broker acknowledged; 400 with an Error
//! object for a bad event, 401 for an unknown key, 503 with `Retry-After` when the broker cannot
//! take it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};

use super::{find_secret, read_json_object, required_str, Bridges, Rejection};

const BRIDGE: &str = "sfs";

/// The handler.
pub async fn receive(
    State(bridges): State<Arc<Bridges>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = accept(&bridges, &headers, body).await;
    bridges.respond(BRIDGE, outcome, StatusCode::OK)
}

async fn accept(bridges: &Bridges, headers: &HeaderMap, body: Body) -> Result<(), Rejection> {
    let (_, mut event) = read_json_object(&bridges.config, headers, body).await?;
    let key = required_str(&event, "clinicApiKey", "clinicApiKey")?;
    let clinics = &bridges.config.sfs.clinics;
    let clinic = find_secret(
        clinics
            .iter()
            .map(|(id, key)| (key.expose().as_bytes(), id.as_str())),
        key.as_bytes(),
    )
    .ok_or_else(|| {
        Rejection::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the clinicApiKey is not known",
        )
    })?
    .to_owned();
    required_str(&event, "eventType", "eventType")?;
    let object = match event.get("object") {
        None | Some(Value::Null) => return Err(Rejection::bad("`object` is missing")),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(Rejection::bad("`object` must be an object")),
    };
    let entity = entity_key(object).unwrap_or_else(|| clinic.clone());
    event.remove("clinicApiKey");
    event.insert("clinicId".to_owned(), Value::String(clinic));
    let payload = serde_json::to_vec(&Value::Object(event))
        .map_err(|_| Rejection::bad("the event cannot be re-encoded"))?;
    bridges
        .produce(
            BRIDGE,
            &bridges.config.sfs.topic,
            entity.as_bytes(),
            &payload,
        )
        .await
}

/// The entity the event is about, for the message key.
fn entity_key(object: &Map<String, Value>) -> Option<String> {
    ["hospitalizationId", "id"]
        .iter()
        .find_map(|name| match object.get(*name) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
}
