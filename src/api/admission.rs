//! Query slots of the events API (`api.max_concurrent_queries`): at most that many list and
//! event queries run at once; the others wait in turn (first come, first served) for up to
//! `api.query_queue_timeout`, then are answered 503 with `Retry-After`. When the API and the
//! pipeline share the EventDB's cores, the API's backends cannot outnumber ingestion's, so
//! ingestion keeps its rate while the API is busy (README "Performance").

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::ApiConfig;
use super::error::ApiError;
use crate::metrics::ApiQueryMetrics;

/// The slots, shared by every request of the process.
#[derive(Debug, Clone)]
pub struct QuerySlots {
    slots: Arc<Semaphore>,
    timeout: Duration,
    metrics: ApiQueryMetrics,
}

/// A slot held while one query runs; returned when dropped.
#[derive(Debug)]
pub(crate) struct QuerySlot {
    _permit: OwnedSemaphorePermit,
}

impl QuerySlots {
    /// `config.query_slots()` slots, waited for at most `api.query_queue_timeout`.
    pub fn new(config: &ApiConfig, metrics: ApiQueryMetrics) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.query_slots())),
            timeout: config.query_queue_timeout,
            metrics,
        }
    }

    /// A slot, once one is free; [`ApiError::Busy`] when none was free within the timeout.
    pub(crate) async fn acquire(&self) -> Result<QuerySlot, ApiError> {
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.metrics
                    .queue_wait
                    .observe(started.elapsed().as_secs_f64());
                Ok(QuerySlot { _permit: permit })
            }
            // The semaphore is never closed; were it, no query could run.
            Ok(Err(_)) | Err(_) => {
                self.metrics.rejected.inc();
                Err(ApiError::Busy {
                    retry_after: RETRY_AFTER,
                })
            }
        }
    }
}

/// `Retry-After` of a request that found no free slot: the queue holds at most
/// `api.query_queue_timeout` of work, so a second later it has moved on.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    fn slots(n: u32, timeout: Duration) -> QuerySlots {
        let config = ApiConfig {
            max_concurrent_queries: Some(n),
            query_queue_timeout: timeout,
            ..ApiConfig::default()
        };
        QuerySlots::new(
            &config,
            ApiQueryMetrics::register(&Registry::new()).unwrap(),
        )
    }

    #[tokio::test]
    async fn queries_wait_for_a_slot_in_turn_and_are_refused_past_the_timeout() {
        let slots = slots(1, Duration::from_millis(50));
        let first = slots.acquire().await.unwrap();
        // The only slot is held: the next caller waits out the timeout, then is refused.
        let refused = slots.acquire().await.unwrap_err();
        assert!(
            matches!(refused, ApiError::Busy { retry_after } if retry_after == RETRY_AFTER),
            "{refused:?}"
        );
        assert_eq!(slots.metrics.rejected.get(), 1);
        // A waiter gets the slot as soon as it is returned.
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.map(drop) }
        });
        tokio::task::yield_now().await;
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(slots.metrics.queue_wait.get_sample_count(), 2);
        assert_eq!(slots.metrics.rejected.get(), 1);
    }

    #[tokio::test]
    async fn as_many_queries_as_slots_run_at_once() {
        let slots = slots(3, Duration::from_millis(50));
        let held: Vec<QuerySlot> = vec![
            slots.acquire().await.unwrap(),
            slots.acquire().await.unwrap(),
            slots.acquire().await.unwrap(),
        ];
        assert!(slots.acquire().await.is_err());
        drop(held);
        slots.acquire().await.unwrap();
    }
}
