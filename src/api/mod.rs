//! The HTTP server: the events API (bearer-token protected), the operations endpoints
//! (`/healthz`, `/readyz`, `/metrics`), the OpenAPI document (`/openapi.json`) and the
//! operator console (`/console`, [`console`]).

pub mod admission;
pub mod auth;
pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod openapi;

pub mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn_with_state, map_response, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use self::admission::QuerySlots;
use self::auth::Authenticator;
use self::config::ApiConfig;
use self::error::ApiError;
use crate::health::Readiness;
use crate::metrics::{DbPoolMetrics, HttpMetrics};
use crate::store::EventStore;

/// Broker metadata older than this makes a consumer process not ready.
pub(crate) const BROKER_METADATA_MAX_AGE: Duration = Duration::from_secs(60);
/// How long `/readyz` waits for the database to answer.
pub(crate) const READINESS_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything request handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// The EventDB.
    pub store: EventStore,
    /// Metrics registry rendered by `/metrics`.
    pub registry: Registry,
    /// Readiness facts.
    pub readiness: Arc<Readiness>,
    /// Events API settings.
    pub api: Arc<ApiConfig>,
    /// Token verification and event-type scopes.
    pub auth: Arc<Authenticator>,
    /// Request metrics.
    pub http_metrics: HttpMetrics,
    /// Connection pool gauges, updated at scrape.
    pub db_pool_metrics: DbPoolMetrics,
    /// The events API's query slots (`api.max_concurrent_queries`).
    pub query_slots: QuerySlots,
}

/// Builds the router.
pub fn router(state: ApiState) -> Router {
    router_with(state, Router::new())
}

/// Builds the router with `extra` routes (e.g. the webhook bridges), which share the fallback
/// and the request metrics.
pub(crate) fn router_with(state: ApiState, extra: Router) -> Router {
    let events = Router::new()
        .route("/api/events", get(events::list_events))
        .route("/api/events/{id}", get(events::get_event))
        .route_layer(from_fn_with_state(
            state.auth.clone(),
            auth::require_read_scope,
        ));
    let document = Arc::new(openapi::document(&state.api));
    let http_metrics = state.http_metrics.clone();
    Router::new()
        .merge(events)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { Json(document.as_ref().clone()) }
            }),
        )
        .with_state(state)
        .merge(extra)
        .fallback(not_found)
        .layer(from_fn_with_state(http_metrics, record_request))
        .layer(map_response(content_headers))
}

/// Every response, errors and the extractors' own rejections included, tells browsers not to
/// sniff its type, and text says its charset (docs/architecture.md, "Hostile input").
async fn content_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let text_without_charset = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .filter(|v| v.starts_with("text/") && !v.contains("charset="));
    if let Some(value) = text_without_charset {
        if let Ok(value) = HeaderValue::from_str(&format!("{value}; charset=utf-8")) {
            headers.insert(header::CONTENT_TYPE, value);
        }
    }
    response
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Observes every request's duration by route template (never the raw path, whose ids would
/// explode the label set), method and status.
async fn record_request(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .request_duration
        .with_label_values(&[route.as_str(), method, response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// `/healthz` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// `/readyz` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessReport {
    /// Whether this process should receive traffic.
    pub ready: bool,
    /// The EventDB answered just now.
    pub database: bool,
    /// The consumer holds partitions (true when no consumer runs in this process).
    pub consumer_assigned: bool,
    /// Broker metadata is younger than 60 s and the consumer is connected to a broker (true when
    /// no consumer runs in this process).
    pub broker_metadata_fresh: bool,
    /// Age of the newest broker metadata, when any was fetched.
    pub broker_metadata_age_ms: Option<i64>,
    /// Why the consumer cannot connect to Kafka (e.g. `authentication failed: …`, `unknown CA:
    /// …`), while it cannot; the same words as the log line.
    pub kafka_error: Option<String>,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive.", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: database reachable, and, when a consumer runs here, partitions assigned and
/// broker metadata fresh.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = ReadinessReport),
        (status = 503, description = "Not ready.", body = ReadinessReport),
    ))]
pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<ReadinessReport>) {
    let readiness = &state.readiness;
    let check = match tokio::time::timeout(READINESS_DB_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(crate::error_report::describe(&e)),
        Err(_) => Err(format!(
            "the database did not answer within {READINESS_DB_TIMEOUT:?}"
        )),
    };
    let database = check.is_ok();
    readiness.database_checked(check);
    let consumer_assigned = readiness.consumer_assigned();
    let age = readiness.broker_metadata_age_ms();
    let broker_metadata_fresh = !readiness.consumer_required()
        || (readiness.broker_up()
            && age.is_some_and(|ms| ms < BROKER_METADATA_MAX_AGE.as_millis() as i64));
    let kafka_error = readiness.kafka_error();
    let ready = database && consumer_assigned && broker_metadata_fresh && kafka_error.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(ReadinessReport {
            ready,
            database,
            consumer_assigned,
            broker_metadata_fresh,
            broker_metadata_age_ms: age,
            kafka_error,
        }),
    )
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format.", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<ApiState>) -> Response {
    for (pool, status) in state.store.pool_statuses() {
        state
            .db_pool_metrics
            .observe(pool, status.size, status.available, status.waiting);
    }
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            buf,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            ApiError::Internal.into_response()
        }
    }
}
