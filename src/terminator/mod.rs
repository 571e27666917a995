//! The terminator: retention of the EventDB (ESOZ's "Event termination", docs/architecture.md
//! "ESOZ Event Manager").
//!
//! One run, in this order:
//! 1. **age** — events inserted more than `event_max_time` ago are deleted. The insertion time
//!    is the one in the event's id, a UUID v7 made as its row is written (to the millisecond,
//!    by the clock of the replica that wrote it), compared with the database clock's now;
//! 2. **count** — of what is left, only the newest `event_max_number` events are kept. "Newest" is
//!    insertion order, the order of the ids, which is total, so a run deletes exactly the rows
//!    past the N-th newest;
//! 3. **state** — optionally, `entity_state` rows of entities none of whose rows was written
//!    within `state_horizon`. State is never deleted together with events: it is the baseline
//!    that later changes are detected against.
//!
//! Deletes go in batches of `batch_size` rows, each its own statement and short transaction,
//! walking the primary key with a keyset cursor, so ingestion and the API keep
//! running; each batch subtracts the counts of the events it deleted in the same statement. The shutdown token is checked between batches; an interrupted run simply leaves the
//! rest to the next one. One replica at a time runs: the run holds a session-level advisory lock
//! on a connection of its own (taken out of the pool and closed afterwards, so the lock can never
//! leak into a pooled connection); a replica that finds it taken skips the run and says so.

pub mod config;
pub mod schedule;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::metrics::TerminatorMetrics;
use crate::store::retention::{first_id_at, EventDeletes, RetentionSession, StateDeletes};
use crate::store::{EventStore, StoreError};

pub use config::TerminatorConfig;
pub use schedule::{next_run, CronSchedule, ScheduleError, TerminatorSchedule};

/// A run failed; nothing is left half-done beyond the batches already committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TerminatorError {
    /// No connection could be had, or a statement failed.
    #[error("terminator database error ({phase}): {source}")]
    Db {
        /// What the run was doing: `lock`, `cutoffs`, `age`, `count`, `state` or `dry run`.
        phase: &'static str,
        /// The database error.
        source: StoreError,
    },
}

fn db(phase: &'static str) -> impl FnOnce(StoreError) -> TerminatorError {
    move |source| TerminatorError::Db { phase, source }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// All rules were applied.
    Completed,
    /// Shutdown stopped the run between two batches; the next run continues.
    Interrupted,
    /// Another replica held the lock; nothing was done.
    Skipped,
}

/// What one run deleted (or, for a dry run, would delete).
#[derive(Debug, Clone, PartialEq)]
pub struct TerminationReport {
    /// How the run ended.
    pub outcome: RunOutcome,
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
    /// Events deleted by the age rule.
    pub deleted_by_age: u64,
    /// Events deleted by the count rule.
    pub deleted_by_count: u64,
    /// `entity_state` rows pruned.
    pub deleted_state: u64,
    /// Events inserted before this instant were expired by age (`None`: rule disabled).
    pub age_cutoff: Option<DateTime<Utc>>,
    /// State rows not written since this instant were stale (`None`: pruning disabled).
    pub state_cutoff: Option<DateTime<Utc>>,
    /// Wall time of the run.
    pub duration: Duration,
}

impl TerminationReport {
    fn new(dry_run: bool) -> Self {
        Self {
            outcome: RunOutcome::Completed,
            dry_run,
            deleted_by_age: 0,
            deleted_by_count: 0,
            deleted_state: 0,
            age_cutoff: None,
            state_cutoff: None,
            duration: Duration::ZERO,
        }
    }
}

impl fmt::Display for TerminationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.outcome == RunOutcome::Skipped {
            return write!(
                f,
                "skipped: another replica holds the terminator lock and is running"
            );
        }
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        write!(
            f,
            "{verb} {} by age, {} by count, {} stale state rows",
            self.deleted_by_age, self.deleted_by_count, self.deleted_state
        )?;
        if self.outcome == RunOutcome::Interrupted {
            write!(f, " (interrupted by shutdown; the next run continues)")?;
        }
        Ok(())
    }
}

/// How the last real run of a process ended, as its log line says it (the operator console
/// shows it).
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// `success`, `interrupted`, `skipped` (another replica held the lock) or `failure`.
    pub result: &'static str,
    /// Events deleted by the age rule.
    pub deleted_by_age: u64,
    /// Events deleted by the count rule.
    pub deleted_by_count: u64,
    /// `entity_state` rows pruned.
    pub deleted_state: u64,
    /// Wall time of the run.
    pub duration: Duration,
    /// Why it failed.
    pub error: Option<String>,
}

/// The last real run of the terminators sharing it (dry runs are not recorded).
#[derive(Debug, Clone, Default)]
pub struct LastRun(Arc<Mutex<Option<RunRecord>>>);

impl LastRun {
    /// The record of the last run, if any ran.
    pub fn get(&self) -> Option<RunRecord> {
        // A poisoned lock still holds a whole record: it is only ever replaced.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, record: RunRecord) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }
}

/// Applies the retention rules to the EventDB.
#[derive(Debug, Clone)]
pub struct Terminator {
    store: EventStore,
    config: TerminatorConfig,
    metrics: TerminatorMetrics,
    last_run: LastRun,
}

impl Terminator {
    /// A terminator over `store` with the rules of `config`.
    pub fn new(store: EventStore, config: TerminatorConfig, metrics: TerminatorMetrics) -> Self {
        Self {
            store,
            config,
            metrics,
            last_run: LastRun::default(),
        }
    }

    /// Records every real run in `last_run` as well.
    pub fn recording_to(mut self, last_run: LastRun) -> Self {
        self.last_run = last_run;
        self
    }

    /// Its configuration.
    pub fn config(&self) -> &TerminatorConfig {
        &self.config
    }

    /// Runs the rules once. A dry run takes no lock, deletes nothing and counts no metrics; it
    /// reports what a run at this moment would delete. Every real run logs one line with its
    /// figures and updates the metrics, whatever its outcome.
    pub async fn run_once(
        &self,
        dry_run: bool,
        shutdown: &CancellationToken,
    ) -> Result<TerminationReport, TerminatorError> {
        let started = Instant::now();
        let mut report = TerminationReport::new(dry_run);
        let result = if dry_run {
            self.preview(&mut report).await
        } else {
            self.execute(&mut report, shutdown).await
        };
        report.duration = started.elapsed();
        self.record(&report, result.as_ref().err());
        result.map(|()| report)
    }

    fn record(&self, report: &TerminationReport, error: Option<&TerminatorError>) {
        let figures = (
            report.deleted_by_age,
            report.deleted_by_count,
            report.deleted_state,
        );
        let ms = report.duration.as_millis() as u64;
        if report.dry_run {
            match error {
                None => tracing::info!(
                    would_delete_by_age = figures.0,
                    would_delete_by_count = figures.1,
                    would_delete_state = figures.2,
                    duration_ms = ms,
                    "terminator dry run"
                ),
                Some(e) => tracing::error!(error = %e, "terminator dry run failed"),
            }
            return;
        }
        let now = unix_now();
        self.last_run.set(RunRecord {
            finished_at: Utc::now(),
            result: match (error, report.outcome) {
                (Some(_), _) => "failure",
                (None, RunOutcome::Skipped) => "skipped",
                (None, RunOutcome::Interrupted) => "interrupted",
                (None, RunOutcome::Completed) => "success",
            },
            deleted_by_age: figures.0,
            deleted_by_count: figures.1,
            deleted_state: figures.2,
            duration: report.duration,
            error: error.map(ToString::to_string),
        });
        match (error, report.outcome) {
            (Some(e), _) => {
                self.metrics.runs.with_label_values(&["failure"]).inc();
                self.metrics.last_failure.set(now);
                self.metrics.duration.observe(report.duration.as_secs_f64());
                tracing::error!(
                    error = %e,
                    deleted_by_age = figures.0,
                    deleted_by_count = figures.1,
                    deleted_state = figures.2,
                    duration_ms = ms,
                    "terminator run failed; the next run retries"
                );
            }
            (None, RunOutcome::Skipped) => {
                self.metrics.runs.with_label_values(&["skipped"]).inc();
                tracing::info!(
                    lock_key = self.config.lock_key,
                    "terminator run skipped: another replica holds the lock"
                );
            }
            (None, outcome) => {
                let result = if outcome == RunOutcome::Interrupted {
                    "interrupted"
                } else {
                    self.metrics.last_success.set(now);
                    "success"
                };
                self.metrics.runs.with_label_values(&[result]).inc();
                self.metrics.duration.observe(report.duration.as_secs_f64());
                tracing::info!(
                    result,
                    deleted_by_age = figures.0,
                    deleted_by_count = figures.1,
                    deleted_state = figures.2,
                    age_cutoff = ?report.age_cutoff,
                    duration_ms = ms,
                    "terminator run finished"
                );
            }
        }
    }

    async fn execute(
        &self,
        report: &mut TerminationReport,
        shutdown: &CancellationToken,
    ) -> Result<(), TerminatorError> {
        let Some(mut session) = self
            .store
            .lock_retention(self.config.lock_key)
            .await
            .map_err(db("lock"))?
        else {
            report.outcome = RunOutcome::Skipped;
            return Ok(());
        };
        let result = self.delete(&mut session, report, shutdown).await;
        if let Err(e) = session.unlock().await {
            tracing::warn!(error = %e, "terminator lock release failed; closing the session releases it");
        }
        result
    }

    async fn delete(
        &self,
        session: &mut RetentionSession,
        report: &mut TerminationReport,
        shutdown: &CancellationToken,
    ) -> Result<(), TerminatorError> {
        let cutoffs = session
            .cutoffs(self.config.event_max_time, self.config.state_horizon)
            .await
            .map_err(db("cutoffs"))?;
        report.age_cutoff = cutoffs.age;
        report.state_cutoff = cutoffs.state;
        let batch = i64::from(self.config.batch_size);

        if let Some(cutoff) = cutoffs.age {
            let deletes = session.events_before(first_id_at(cutoff), batch).await;
            let deletes = deletes.map(Batches::Events);
            if !self
                .in_batches(deletes, "age", shutdown, &mut report.deleted_by_age)
                .await?
            {
                report.outcome = RunOutcome::Interrupted;
                return Ok(());
            }
        }

        if let Some(max) = self.config.event_max_number {
            // The N-th newest row; everything before it in insertion order goes. Fixed once, so
            // events inserted while the run deletes are never counted against the limit here.
            let nth = session.nth_newest_event(max).await.map_err(db("count"))?;
            if let Some(bound) = nth {
                let deletes = session.events_before(bound, batch).await;
                let deletes = deletes.map(Batches::Events);
                if !self
                    .in_batches(deletes, "count", shutdown, &mut report.deleted_by_count)
                    .await?
                {
                    report.outcome = RunOutcome::Interrupted;
                    return Ok(());
                }
            }
        }

        if let Some(cutoff) = cutoffs.state {
            let deletes = session.stale_states(cutoff, batch).await;
            let deletes = deletes.map(Batches::States);
            if !self
                .in_batches(deletes, "state", shutdown, &mut report.deleted_state)
                .await?
            {
                report.outcome = RunOutcome::Interrupted;
            }
        }
        Ok(())
    }

    /// Runs `batches` (or fails with the error preparing them) to the end, counting each in
    /// `total` and under `reason`, and resting between two. `false` when shutdown interrupted it.
    async fn in_batches(
        &self,
        batches: Result<Batches<'_>, StoreError>,
        reason: &'static str,
        shutdown: &CancellationToken,
        total: &mut u64,
    ) -> Result<bool, TerminatorError> {
        let mut batches = batches.map_err(db(reason))?;
        let deleted = self.metrics.deleted.with_label_values(&[reason]);
        loop {
            if shutdown.is_cancelled() {
                return Ok(false);
            }
            let batch = match &mut batches {
                Batches::Events(deletes) => deletes.next_batch().await,
                Batches::States(deletes) => deletes.next_batch().await,
            }
            .map_err(db(reason))?;
            deleted.inc_by(batch.deleted);
            *total += batch.deleted;
            if batch.last {
                return Ok(true);
            }
            if !self.rest(shutdown).await {
                return Ok(false);
            }
        }
    }

    /// Waits `batch_pause` between two batches; `false` when shutdown came first.
    async fn rest(&self, shutdown: &CancellationToken) -> bool {
        crate::retry::sleep_or_shutdown(self.config.batch_pause, shutdown).await
    }

    /// Counts what a run would delete now, with the same cutoffs.
    async fn preview(&self, report: &mut TerminationReport) -> Result<(), TerminatorError> {
        let preview = self
            .store
            .retention_preview(self.config.event_max_time, self.config.state_horizon)
            .await
            .map_err(db("dry run"))?;
        report.age_cutoff = preview.cutoffs.age;
        report.state_cutoff = preview.cutoffs.state;
        report.deleted_by_age = preview.expired_events;
        if let Some(max) = self.config.event_max_number {
            report.deleted_by_count =
                (preview.total_events - preview.expired_events).saturating_sub(max);
        }
        report.deleted_state = preview.stale_states;
        Ok(())
    }
}

/// The batched deletes of one rule.
enum Batches<'a> {
    Events(EventDeletes<'a>),
    States(StateDeletes<'a>),
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: RunOutcome, dry_run: bool) -> TerminationReport {
        TerminationReport {
            outcome,
            deleted_by_age: 3,
            deleted_by_count: 2,
            deleted_state: 1,
            ..TerminationReport::new(dry_run)
        }
    }

    #[test]
    fn report_reads_as_the_cli_prints_it() {
        assert_eq!(
            report(RunOutcome::Completed, true).to_string(),
            "would delete 3 by age, 2 by count, 1 stale state rows"
        );
        assert_eq!(
            report(RunOutcome::Completed, false).to_string(),
            "deleted 3 by age, 2 by count, 1 stale state rows"
        );
        assert!(report(RunOutcome::Interrupted, false)
            .to_string()
            .contains("interrupted"));
        assert!(report(RunOutcome::Skipped, false)
            .to_string()
            .starts_with("skipped"));
    }
}
