//! `GET /api/facets`: the event types, entity types and attributes of the last day, which the
//! console offers as suggestions in its event filters.

use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::ConsoleState;
use crate::api::auth::Principal;
use crate::api::error::ApiError;

/// How far back the suggestions reach.
pub(crate) const FACET_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// `GET /api/facets` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct FacetList {
    /// Values are of events whose `event_time` is at or after the 10-minute span holding this.
    pub since: DateTime<Utc>,
    /// Event types, sorted (at most 200; types the token may not see are left out).
    pub event_types: Vec<String>,
    /// Entity types, sorted (at most 200).
    pub entity_types: Vec<String>,
    /// Top-level property names, sorted (at most 200).
    pub attributes: Vec<String>,
}

/// Event types, entity types and attributes seen in the last 24 hours.
#[utoipa::path(
    get,
    path = "/api/facets",
    tag = "console",
    responses(
        (status = 200, description = "Values seen recently.", body = FacetList),
        (status = 401, description = "Missing or invalid bearer token.", body = crate::api::error::ErrorBody),
        (status = 403, description = "The token lacks `event:read`.", body = crate::api::error::ErrorBody),
        (status = 503, description = "The event database is unavailable.", body = crate::api::error::ErrorBody),
    ),
    security(("bearer" = ["event:read"]))
)]
pub(crate) async fn facets(
    State(state): State<ConsoleState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<FacetList>, ApiError> {
    let since = Utc::now() - FACET_WINDOW;
    let facets = state
        .store
        .recent_facets(since, &state.auth.hidden_event_types(&principal))
        .await?;
    Ok(Json(FacetList {
        since,
        event_types: facets.event_types,
        entity_types: facets.entity_types,
        attributes: facets.attributes,
    }))
}
