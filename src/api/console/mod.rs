//! The operator console (README "Operating"): one page at `/console`, served from the binary,
//! and the JSON endpoints it reads besides `/api/events` — the group's lag
//! (`/api/status`), dead letters of the last hour (`/api/dead-letters`), the terminator
//! (`/api/terminator`) and filter suggestions (`/api/facets`).
//!
//! The page and its files carry no data and are public; every endpoint needs the same bearer
//! token with `event:read` as the events API. The page takes the token from its login form or
//! from the fragment of the link the demo prints (`/console#token=…`, never sent to a server),
//! removes it from the address bar and sends it only in the `Authorization` header.

pub mod assets;
pub mod dead_letters;
pub mod facets;
pub mod status;
pub mod terminator;

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::Router;

use super::admission::QuerySlots;
use super::auth::{self, Authenticator};
use crate::kafka::KafkaConfig;
use crate::store::EventStore;
use crate::terminator::{LastRun, TerminatorConfig};

/// What the console's endpoints read.
#[derive(Clone)]
pub struct ConsoleState {
    store: EventStore,
    auth: Arc<Authenticator>,
    kafka: Arc<KafkaConfig>,
    status: Arc<status::StatusSource>,
    dead_letter_topics: Arc<[String]>,
    terminator: Arc<TerminatorConfig>,
    terminator_runs: LastRun,
    query_slots: QuerySlots,
}

impl ConsoleState {
    /// The console of the process whose consumer group is `kafka.group_id`, whose rules
    /// dead-letter to `dead_letter_topics`, and whose terminator records its runs in
    /// `terminator_runs`. Its queries of the EventDB take the events API's `query_slots`.
    pub fn new(
        store: EventStore,
        auth: Arc<Authenticator>,
        kafka: &KafkaConfig,
        dead_letter_topics: Vec<String>,
        terminator: TerminatorConfig,
        terminator_runs: LastRun,
        query_slots: QuerySlots,
    ) -> Self {
        let mut dead_letter_topics = dead_letter_topics;
        dead_letter_topics.sort();
        dead_letter_topics.dedup();
        Self {
            status: Arc::new(status::StatusSource::new(store.clone(), kafka)),
            store,
            auth,
            kafka: Arc::new(kafka.clone()),
            dead_letter_topics: dead_letter_topics.into(),
            terminator: Arc::new(terminator),
            terminator_runs,
            query_slots,
        }
    }
}

/// The page, its files and its endpoints.
pub fn router(state: ConsoleState) -> Router {
    let endpoints = Router::new()
        .route("/api/status", get(status::status))
        .route("/api/dead-letters", get(dead_letters::dead_letters))
        .route("/api/terminator", get(terminator::terminator))
        .route("/api/facets", get(facets::facets))
        .route_layer(from_fn_with_state(
            state.auth.clone(),
            auth::require_read_scope,
        ))
        .with_state(state);
    Router::new()
        .route("/console", get(assets::page))
        .route("/console/", get(assets::page))
        .route("/console/{file}", get(assets::file))
        .merge(endpoints)
}
