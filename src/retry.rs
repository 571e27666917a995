//! The one retry policy: an operation that failed for a reason that may pass (the EventDB or
//! the dead-letter topic unavailable, a database still starting) is tried again after a
//! doubling backoff, and every wait is cut short by shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long to wait before the next retry: doubling from 100 ms up to `max`.
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(ms).min(max)
}

/// The one way to wait before trying again: [`backoff`] up to `max_backoff`
/// before the next attempt, cut short by shutdown.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Longest wait between two attempts.
    pub(crate) max_backoff: Duration,
    /// Ends a wait early.
    pub(crate) shutdown: CancellationToken,
}

impl RetryPolicy {
    /// Waits before the attempt after `attempt`; `false` when shutdown was requested first.
    pub(crate) async fn wait(&self, attempt: u32) -> bool {
        sleep_or_shutdown(backoff(attempt, self.max_backoff), &self.shutdown).await
    }
}

/// Sleeps for `duration`; `false` when shutdown came first.
pub(crate) async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) -> bool {
    if duration.is_zero() {
        return true;
    }
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_up_to_the_maximum() {
        let max = Duration::from_secs(1);
        let waits: Vec<u128> = (0..6).map(|a| backoff(a, max).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            backoff(u32::MAX, Duration::MAX),
            Duration::from_millis(6_553_600)
        );
    }

    #[tokio::test]
    async fn shutdown_ends_a_wait() {
        let shutdown = CancellationToken::new();
        let policy = RetryPolicy {
            max_backoff: Duration::from_secs(3600),
            shutdown: shutdown.clone(),
        };
        assert!(policy.clone().wait(0).await, "a short wait ends by itself");
        shutdown.cancel();
        assert!(!policy.wait(20).await, "an hour's wait ends at shutdown");
    }
}
