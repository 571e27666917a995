//! `GET /api/terminator`: the retention rules, the last run of this process's terminator and
//! its next run.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::ConsoleState;
use crate::terminator::RunRecord;

/// `GET /api/terminator` response.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TerminatorStatus {
    /// Whether this process schedules the terminator (`terminator.enabled`).
    pub enabled: bool,
    /// Its cron expression (seconds first, UTC).
    pub schedule: String,
    /// When the schedule fires next (absent when disabled).
    pub next_run: Option<DateTime<Utc>>,
    /// Age rule: events inserted longer ago are deleted (absent: rule off).
    pub event_max_time_seconds: Option<u64>,
    /// Count rule: only the newest this many events are kept (absent: rule off).
    pub event_max_number: Option<u64>,
    /// `entity_state` rows untouched this long are pruned (absent: kept forever).
    pub state_horizon_seconds: Option<u64>,
    /// The last run of this process (absent: none since it started). One replica at a time
    /// runs; the others record `skipped`.
    pub last_run: Option<LastRunView>,
}

/// One terminator run.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LastRunView {
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// `success`, `interrupted`, `skipped` (another replica held the lock) or `failure`.
    pub result: String,
    /// Events deleted by the age rule.
    pub deleted_by_age: u64,
    /// Events deleted by the count rule.
    pub deleted_by_count: u64,
    /// `entity_state` rows pruned.
    pub deleted_state: u64,
    /// Wall time of the run, in milliseconds.
    pub duration_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<RunRecord> for LastRunView {
    fn from(r: RunRecord) -> Self {
        Self {
            finished_at: r.finished_at,
            result: r.result.to_owned(),
            deleted_by_age: r.deleted_by_age,
            deleted_by_count: r.deleted_by_count,
            deleted_state: r.deleted_state,
            duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
            error: r.error,
        }
    }
}

/// The terminator's rules, last run and next run.
#[utoipa::path(
    get,
    path = "/api/terminator",
    tag = "console",
    responses(
        (status = 200, description = "The terminator of this process.", body = TerminatorStatus),
        (status = 401, description = "Missing or invalid bearer token.", body = crate::api::error::ErrorBody),
        (status = 403, description = "The token lacks `event:read`.", body = crate::api::error::ErrorBody),
    ),
    security(("bearer" = ["event:read"]))
)]
pub async fn terminator(State(state): State<ConsoleState>) -> Json<TerminatorStatus> {
    let config = &state.terminator;
    Json(TerminatorStatus {
        enabled: config.enabled,
        schedule: config.schedule.to_string(),
        next_run: config
            .enabled
            .then(|| config.schedule.next_after(Utc::now()))
            .flatten(),
        event_max_time_seconds: config.event_max_time.map(|d| d.as_secs()),
        event_max_number: config.event_max_number,
        state_horizon_seconds: config.state_horizon.map(|d| d.as_secs()),
        last_run: state.terminator_runs.get().map(LastRunView::from),
    })
}
