//! `GET /api/events` and `GET /api/events/{id}`: the handlers here; the query string in
//! `query.rs` (pure), its rules in the OpenAPI document in `openapi.rs`, the response bodies in
//! `body.rs`, and the SQL in the store (`store::event_queries`).
//!
//! Period (ESOZ's `EVENTS_LIST_MAX_PERIOD_HOURS`, docs/architecture.md "ESOZ Event Manager"):
//! the list covers the half-open window `date <= event_time < date_to` — `date` inclusive,
//! `date_to` exclusive, so consecutive windows tile without overlap. Without dates the window is
//! the last period up to now; with one date it is one period from `date` or up to `date_to`;
//! with both their distance may not exceed the period (else 422 with ESOZ's message).
//!
//! Dates are RFC 3339 (`2017-04-20T19:14:13Z`, `…+02:00`; a `+` that the query string decoded to
//! a space is accepted), or without a zone and then UTC (`2017-04-20T19:14:13`,
//! `2017-04-20 19:14:13`, fractions allowed), or a plain date (`2017-04-20`, midnight UTC):
//! exactly what [`DATE_PATTERN`] matches, which the OpenAPI document publishes
//! (`crate::time::parse_query_time` reads them).
//!
//! Unknown parameters, repeated parameters, empty values and values whose percent-encoded bytes
//! are not UTF-8 are rejected with 422 naming the parameter: a misspelt filter must not silently
//! widen the result, nor a mangled one silently change it.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Extension;
use chrono::Utc;

use self::body::{json_response, unreadable, BodyWriter};
use super::auth::Principal;
use super::error::ApiError;
use super::ApiState;
use crate::store::event_queries::EventsQuery;

mod body;
mod openapi;
mod query;

pub use self::body::{EventEnvelope, EventList, EventView, Paging};
pub(crate) use self::openapi::document_events;
pub use self::query::{parse_query, DATE_PATTERN};

/// Lists events.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    params(
        ("date" = Option<String>, Query),
        ("date_to" = Option<String>, Query),
        ("event_type" = Option<String>, Query),
        ("entity_type" = Option<String>, Query),
        ("attribute_name" = Option<String>, Query),
        ("new_value" = Option<String>, Query),
        ("page" = Option<u32>, Query),
        ("page_size" = Option<u32>, Query),
    ),
    // Errors, scope and the parameters' rules: `openapi::document_events`.
    responses((status = 200, description = "A page of events.", body = EventList)),
)]
pub(crate) async fn list_events(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_query(raw.as_deref(), Utc::now(), &state.api)?;
    if let Some(scope) = q
        .event_type
        .as_deref()
        .and_then(|t| state.auth.event_type_scope(t))
    {
        if !principal.has_scope(scope) {
            return Err(ApiError::InsufficientScope {
                scope: scope.to_owned(),
            });
        }
    }
    let hidden = state.auth.hidden_event_types(&principal);
    let key = list_key(&q, &hidden);
    let store = state.store.clone();
    let body = state
        .query_slots
        .shared(key, move |slot| async move {
            let page = store.list_events(&q, hidden).await?;
            drop(slot);
            let page_size = i64::from(q.page_size);
            let paging = Paging {
                page_number: q.page,
                page_size: q.page_size,
                total_entries: page.total_entries,
                total_pages: (page.total_entries + page_size - 1) / page_size,
            };
            let body = BodyWriter::list(&page.rows, &paging).map_err(unreadable)?;
            Ok(bytes::Bytes::from(body))
        })
        .await?;
    Ok(json_response(body))
}

/// What makes two list requests the same query, whose answer they may share
/// (`QuerySlots::shared`): every part of it but the time it was read, which only picks how
/// the total is counted, not the total; and the event types the token may not see.
fn list_key(q: &EventsQuery, hidden: &[String]) -> String {
    let EventsQuery {
        from,
        to,
        event_type,
        entity_type,
        attribute,
        attribute_indexed,
        page,
        page_size,
        now: _,
    } = q;
    format!(
        "{from:?} {to:?} {event_type:?} {entity_type:?} {attribute:?} {attribute_indexed} \
         {page} {page_size} {hidden:?}"
    )
}

/// Gets one event. Unknown and malformed ids, and events of a type the token may not see, are 404.
#[utoipa::path(
    get,
    path = "/api/events/{id}",
    tag = "events",
    params(("id" = uuid::Uuid, Path, description = "Event id (a UUID; anything else is 404).")),
    responses((status = 200, description = "The event.", body = EventEnvelope)),
)]
pub(crate) async fn get_event(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: uuid::Uuid = id.parse().map_err(|_| ApiError::NotFound)?;
    let slot = state.query_slots.acquire().await?;
    let row = state.store.event(id).await?.ok_or(ApiError::NotFound)?;
    drop(slot);
    let event = row.event().map_err(unreadable)?;
    if state
        .auth
        .event_type_scope(event.event_type)
        .is_some_and(|scope| !principal.has_scope(scope))
    {
        return Err(ApiError::NotFound);
    }
    Ok(json_response(BodyWriter::envelope(&event)))
}
