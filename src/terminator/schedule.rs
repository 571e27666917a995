//! The cron job that runs the terminator inside `run` (tokio-cron-scheduler, UTC).

use std::fmt;

use serde::Deserialize;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Terminator;

/// The scheduler could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("terminator schedule `{expression}`: {reason}")]
    Expression {
        /// The expression.
        expression: String,
        /// What is wrong.
        reason: String,
    },
    /// tokio-cron-scheduler failed.
    #[error("terminator scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
}

/// A cron expression the scheduler accepts: 6 or 7 fields starting with seconds, in UTC.
/// Checked once, when it is read, with the scheduler's own parser.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CronSchedule(String);

impl CronSchedule {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the schedule fires next after `after` (exclusive); `None` if it never fires again.
    pub(crate) fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        next_run(&self.0, after)
    }
}

impl Default for CronSchedule {
    /// 03:00:00 UTC daily.
    fn default() -> Self {
        Self("0 0 3 * * *".to_owned())
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CronSchedule {
    type Error = String;

    /// The error is the reason alone; the configuration names the key.
    fn try_from(expression: String) -> Result<Self, String> {
        match Job::new_async(expression.as_str(), |_, _| Box::pin(async {})) {
            Ok(_) => Ok(Self(expression)),
            Err(_) => Err(
                "not a valid cron expression: tokio-cron-scheduler needs 6 or 7 \
                 fields starting with seconds, e.g. \"0 0 3 * * *\" for 03:00:00 UTC daily"
                    .to_owned(),
            ),
        }
    }
}

impl std::str::FromStr for CronSchedule {
    type Err = ScheduleError;

    fn from_str(expression: &str) -> Result<Self, ScheduleError> {
        Self::try_from(expression.to_owned()).map_err(|reason| ScheduleError::Expression {
            expression: expression.to_owned(),
            reason,
        })
    }
}

/// When `expression` fires next after `after` (exclusive), read with the options the scheduler
/// parses it with; `None` for an expression it would refuse or one that never fires again.
pub fn next_run(
    expression: &str,
    after: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    croner::Cron::new(expression)
        .with_seconds_required()
        .with_dom_and_dow()
        .parse()
        .ok()?
        .find_next_occurrence(&after, false)
        .ok()
}

/// The running cron job. Stop it with [`TerminatorSchedule::stop`].
pub struct TerminatorSchedule {
    scheduler: JobScheduler,
    runs: TaskTracker,
}

impl std::fmt::Debug for TerminatorSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminatorSchedule")
            .field("runs_in_flight", &self.runs.len())
            .finish()
    }
}

impl TerminatorSchedule {
    /// Schedules `terminator` on `schedule`. Every run watches `shutdown` between batches.
    /// Overlapping runs (one still deleting when the next fires) are harmless: the later one
    /// finds the advisory lock taken and is counted as skipped.
    pub async fn start(
        terminator: Terminator,
        schedule: &CronSchedule,
        shutdown: CancellationToken,
    ) -> Result<Self, ScheduleError> {
        let expression = schedule.as_str();
        let runs = TaskTracker::new();
        let tracker = runs.clone();
        let job = Job::new_async(expression, move |_, _| {
            let terminator = terminator.clone();
            let shutdown = shutdown.clone();
            Box::pin(tracker.track_future(async move {
                if shutdown.is_cancelled() {
                    return;
                }
                // run_once logs and counts its own outcome; the next tick retries on failure.
                let _ = terminator.run_once(false, &shutdown).await;
            }))
        })
        .map_err(|e| ScheduleError::Expression {
            expression: expression.to_owned(),
            reason: e.to_string(),
        })?;
        let scheduler = JobScheduler::new().await?;
        scheduler.add(job).await?;
        scheduler.start().await?;
        tracing::info!(schedule = expression, "terminator scheduled (UTC)");
        Ok(Self { scheduler, runs })
    }

    /// Stops firing and waits for a run in progress, which ends at its next batch boundary once
    /// the shutdown token given to [`TerminatorSchedule::start`] is cancelled.
    pub async fn stop(mut self) -> Result<(), ScheduleError> {
        let stopped = self.scheduler.shutdown().await;
        self.runs.close();
        self.runs.wait().await;
        stopped.map_err(ScheduleError::from)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    #[test]
    fn next_run_follows_the_expression_in_utc() {
        let at = Utc.with_ymd_and_hms(2026, 12, 3, 4, 30, 0).unwrap();
        assert_eq!(
            next_run("0 0 3 * * *", at),
            Some(Utc.with_ymd_and_hms(2026, 12, 4, 3, 0, 0).unwrap())
        );
        assert_eq!(
            next_run("*/15 * * * * *", at),
            Some(Utc.with_ymd_and_hms(2026, 12, 3, 4, 30, 15).unwrap()),
            "the moment itself is not the next run"
        );
        assert_eq!(next_run("not cron", at), None);
        assert_eq!(next_run("0 0 3 * *", at), None, "seconds are required");
    }

    #[test]
    fn next_run_accepts_what_the_scheduler_accepts() {
        for expression in [
            "0 0 3 * * *",
            "0 */5 * * * *",
            "0 0 3 * * Mon-Fri",
            "0 0 0 1 * *",
        ] {
            assert!(expression.parse::<CronSchedule>().is_ok(), "{expression}");
            assert!(next_run(expression, Utc::now()).is_some(), "{expression}");
        }
    }
}
