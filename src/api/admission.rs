//! Query slots of the events API (`api.max_concurrent_queries`): at most that many list and
//! event queries run at once; the others wait in turn (first come, first served) for up to
//! `api.query_queue_timeout`, then are answered 503 with `Retry-After`. When the API and the
//! pipeline share the EventDB's cores, the API's backends cannot outnumber ingestion's, so
//! ingestion keeps its rate while the API is busy (README "Performance").
//!
//! Identical queries that wait at the same time run once ([`QuerySlots::shared`]): pollers
//! asking for the same page (dashboards, the same filters over the same window) share one
//! statement and its answer. Only requests that arrived before the statement started join it,
//! so each gets a snapshot taken after it arrived, as if it had run alone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
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
    /// `None` when `api.share_queries` is off.
    waiting: Option<Waiting>,
}

/// What a shared query answers: the response body, or why not.
pub(crate) type RunResult = Result<bytes::Bytes, ApiError>;

/// A query run that requests may still join: it has not started its statement yet.
type Run = Shared<BoxFuture<'static, RunResult>>;

/// A waiting run as [`Waiting`] holds it: its number and a weak handle.
type WaitingRun = (u64, WeakShared<BoxFuture<'static, RunResult>>);

/// The runs waiting for a slot, by their query's key (a string that names every part of the
/// query that decides its answer). Held weakly: a run whose requests all went away (their
/// clients hung up) is dropped, and its entry with it.
#[derive(Clone, Default)]
struct Waiting(Arc<Mutex<HashMap<String, WaitingRun>>>);

impl Waiting {
    /// The map, whether or not a holder panicked: every change to it is one insert or remove,
    /// so it is never left half-changed.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WaitingRun>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let runs = self.lock().len();
        f.debug_struct("Waiting").field("runs", &runs).finish()
    }
}

/// Takes a waiting run out of [`Waiting`] when dropped (the run got its slot, or was given
/// up), unless another run has taken its key since.
struct Unlist {
    waiting: Waiting,
    key: String,
    id: u64,
}

impl Drop for Unlist {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock();
        if waiting.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            waiting.remove(&self.key);
        }
    }
}

/// Numbers the runs, so that a run leaving [`Waiting`] removes its own entry only.
static RUN_IDS: AtomicU64 = AtomicU64::new(0);

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
            waiting: config.share_queries.then(Waiting::default),
        }
    }

    /// The answer of the query named `key`, made by `query` once a slot is free, shared with
    /// every request for the same key that arrives while it waits for the slot. `query` gets
    /// the slot and returns it (drops it) when its statements are done. A request that
    /// arrives once the query has its slot starts a run of its own, so no request is answered
    /// from a statement that started before it arrived. With `api.share_queries` off every
    /// request runs its own.
    pub(crate) async fn shared<F, Q>(&self, key: String, query: F) -> RunResult
    where
        F: FnOnce(QuerySlot) -> Q + Send + 'static,
        Q: Future<Output = RunResult> + Send + 'static,
    {
        let Some(waiting) = &self.waiting else {
            return query(self.acquire().await?).await;
        };
        let run: Run = {
            let mut runs = waiting.lock();
            match runs.get(&key).and_then(|(_, run)| run.upgrade()) {
                Some(run) => {
                    self.metrics.shared.inc();
                    run
                }
                None => {
                    let id = RUN_IDS.fetch_add(1, Ordering::Relaxed);
                    let unlist = Unlist {
                        waiting: waiting.clone(),
                        key: key.clone(),
                        id,
                    };
                    let slots = self.clone();
                    let run = async move {
                        let slot = slots.acquire().await;
                        // From here on the statement may start: later requests run anew.
                        drop(unlist);
                        query(slot?).await
                    }
                    .boxed()
                    .shared();
                    let weak = run.downgrade().expect("a run not yet polled");
                    runs.insert(key, (id, weak));
                    run
                }
            }
        };
        run.await
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

    /// A query that counts its runs and answers `body`.
    fn counted(
        runs: &Arc<AtomicU64>,
        body: &'static str,
    ) -> impl FnOnce(QuerySlot) -> BoxFuture<'static, RunResult> + Send + 'static {
        let runs = runs.clone();
        move |slot| {
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                drop(slot);
                Ok(bytes::Bytes::from_static(body.as_bytes()))
            }
            .boxed()
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn identical_queries_waiting_at_once_run_once() {
        let slots = slots(1, Duration::from_secs(5));
        let held = slots.acquire().await.unwrap();
        let (a_runs, b_runs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut waiting = Vec::new();
        for (key, runs, body) in [
            ("a", &a_runs, "A"),
            ("b", &b_runs, "B"),
            ("a", &a_runs, "A"),
            ("a", &a_runs, "A"),
        ] {
            let slots = slots.clone();
            let query = counted(runs, body);
            waiting.push(tokio::spawn(async move {
                slots.shared(key.to_owned(), query).await
            }));
            settle().await;
        }
        assert_eq!(a_runs.load(Ordering::SeqCst), 0, "no slot yet");
        drop(held);
        let answers: Vec<_> = futures::future::join_all(waiting)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert_eq!(answers, ["A", "B", "A", "A"]);
        assert_eq!(a_runs.load(Ordering::SeqCst), 1);
        assert_eq!(b_runs.load(Ordering::SeqCst), 1);
        assert_eq!(slots.metrics.shared.get(), 2);
        // Nothing waits any more: the next request runs its own query.
        slots
            .shared("a".to_owned(), counted(&a_runs, "A"))
            .await
            .unwrap();
        assert_eq!(a_runs.load(Ordering::SeqCst), 2);
        assert!(slots.waiting.as_ref().unwrap().lock().is_empty());
    }

    #[tokio::test]
    async fn without_sharing_every_request_runs_its_own_query() {
        let config = ApiConfig {
            max_concurrent_queries: Some(1),
            share_queries: false,
            ..ApiConfig::default()
        };
        let slots = QuerySlots::new(
            &config,
            ApiQueryMetrics::register(&Registry::new()).unwrap(),
        );
        let held = slots.acquire().await.unwrap();
        let runs = Arc::new(AtomicU64::new(0));
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let (slots, query) = (slots.clone(), counted(&runs, "A"));
                tokio::spawn(async move { slots.shared("a".to_owned(), query).await })
            })
            .collect();
        settle().await;
        drop(held);
        for answer in futures::future::join_all(waiting).await {
            assert_eq!(answer.unwrap().unwrap(), "A");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(slots.metrics.shared.get(), 0);
    }

    #[tokio::test]
    async fn a_request_never_joins_a_query_that_started_before_it_arrived() {
        let slots = slots(2, Duration::from_secs(5));
        let runs = Arc::new(AtomicU64::new(0));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let (slots, runs) = (slots.clone(), runs.clone());
            async move {
                slots
                    .shared("a".to_owned(), move |slot| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        started_tx.send(()).unwrap();
                        finish_rx.await.unwrap();
                        drop(slot);
                        Ok(bytes::Bytes::from_static(b"old"))
                    })
                    .await
            }
        });
        started.await.unwrap();
        // The first query's statement is under way: the same query now runs again.
        let second = slots
            .shared("a".to_owned(), counted(&runs, "new"))
            .await
            .unwrap();
        assert_eq!(second, "new");
        finish.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), "old");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(slots.metrics.shared.get(), 0);
    }

    #[tokio::test]
    async fn errors_are_shared_and_abandoned_runs_are_forgotten() {
        let slots = slots(1, Duration::from_secs(5));
        let held = slots.acquire().await.unwrap();
        // A request whose client went away before its turn leaves nothing behind.
        let gone = tokio::spawn({
            let slots = slots.clone();
            async move {
                slots
                    .shared("a".to_owned(), |_| async { Ok(bytes::Bytes::new()) })
                    .await
            }
        });
        settle().await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert!(slots.waiting.as_ref().unwrap().lock().is_empty());
        // Two requests for a query that fails both get its error.
        let failing = |slots: QuerySlots| async move {
            slots
                .shared("a".to_owned(), |_| async { Err(ApiError::Unavailable) })
                .await
        };
        let both = (
            tokio::spawn(failing(slots.clone())),
            tokio::spawn(failing(slots.clone())),
        );
        settle().await;
        drop(held);
        for answer in [both.0.await.unwrap(), both.1.await.unwrap()] {
            assert!(matches!(answer, Err(ApiError::Unavailable)), "{answer:?}");
        }
        assert_eq!(slots.metrics.shared.get(), 1);
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
