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
        (status = 503, description = "The event database is unavailable, or more queries wait than `api.query_queue_timeout` allows (then with `Retry-After`).", body = crate::api::error::ErrorBody),
    ),
    security(("bearer" = ["event:read"]))
)]
pub(crate) async fn facets(
    State(state): State<ConsoleState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<FacetList>, ApiError> {
    let since = Utc::now() - FACET_WINDOW;
    // Its sessions are the events API's, so are its slots (`api.max_concurrent_queries`).
    let slot = state.query_slots.acquire().await?;
    let facets = state
        .store
        .recent_facets(since, &state.auth.hidden_event_types(&principal))
        .await?;
    drop(slot);
    Ok(Json(FacetList {
        since,
        event_types: facets.event_types,
        entity_types: facets.entity_types,
        attributes: facets.attributes,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::api::admission::QuerySlots;
    use crate::api::auth::Authenticator;
    use crate::api::config::{ApiConfig, AuthConfig};
    use crate::kafka::KafkaConfig;
    use crate::metrics::ApiQueryMetrics;
    use crate::store::{DatabaseConfig, DatabaseUrl, EventStore};
    use crate::terminator::{LastRun, TerminatorConfig};

    #[tokio::test]
    async fn suggestions_take_a_query_slot() {
        let api = ApiConfig {
            max_concurrent_queries: Some(1),
            query_queue_timeout: Duration::from_millis(20),
            ..ApiConfig::default()
        };
        let slots = QuerySlots::new(
            &api,
            ApiQueryMetrics::register(&prometheus::Registry::new()).unwrap(),
        );
        // Nothing listens there: a request that reaches the store is answered 503 unavailable.
        let store = EventStore::connect(&DatabaseConfig {
            url: DatabaseUrl::parse("postgres://nobody@127.0.0.1:9/none").unwrap(),
            ..DatabaseConfig::default()
        })
        .unwrap();
        let auth = Arc::new(
            Authenticator::from_config(&AuthConfig {
                disabled: true,
                ..AuthConfig::default()
            })
            .unwrap(),
        );
        let principal = auth.authenticate(None).unwrap();
        let state = ConsoleState::new(
            store,
            auth,
            &KafkaConfig::default(),
            Vec::new(),
            TerminatorConfig::default(),
            LastRun::default(),
            slots.clone(),
        );
        // While the events API holds the only slot, the suggestions wait for it, then are
        // refused with Retry-After.
        let held = slots.acquire().await.unwrap();
        let refused = facets(State(state.clone()), Extension(principal.clone()))
            .await
            .unwrap_err();
        assert!(matches!(refused, ApiError::Busy { .. }), "{refused:?}");
        drop(held);
        let unavailable = facets(State(state), Extension(principal))
            .await
            .unwrap_err();
        assert!(
            !matches!(unavailable, ApiError::Busy { .. }),
            "{unavailable:?}"
        );
    }
}
