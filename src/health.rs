//! Liveness and readiness facts shared by the pipeline (which updates them) and the API.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

/// What `/readyz` reports on.
#[derive(Debug, Default)]
pub struct Readiness {
    database_up: AtomicBool,
    consumer_assigned: AtomicBool,
    consumer_required: AtomicBool,
    broker_metadata_at_ms: AtomicI64,
    kafka_error: Mutex<Option<String>>,
    broker_up: AtomicBool,
    /// Why the last readiness check of the database failed, to log each new cause once.
    database_check_error: Mutex<Option<String>>,
}

impl Readiness {
    /// Readiness for a process that runs a consumer (it must hold an assignment to be ready).
    pub fn for_consumer() -> Self {
        let r = Self::default();
        r.consumer_required.store(true, Ordering::Relaxed);
        r
    }

    /// Records whether the database accepted the last batch or ping.
    pub(crate) fn set_database_up(&self, up: bool) {
        self.database_up.store(up, Ordering::Relaxed);
    }

    /// Records whether the consumer has partitions assigned.
    pub fn set_consumer_assigned(&self, assigned: bool) {
        self.consumer_assigned.store(assigned, Ordering::Relaxed);
    }

    /// Records that broker metadata was fetched now.
    pub(crate) fn touch_broker_metadata(&self) {
        self.broker_metadata_at_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Records whether the consumer's client holds a connection to a broker (from its statistics,
    /// every few seconds, and at once when librdkafka reports every broker down).
    pub(crate) fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
    }

    /// Whether the consumer's client was connected to a broker at last report.
    pub(crate) fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    /// Whether the database was up at last check.
    pub fn database_up(&self) -> bool {
        self.database_up.load(Ordering::Relaxed)
    }

    /// Whether the consumer holds an assignment (true when no consumer runs here).
    pub fn consumer_assigned(&self) -> bool {
        !self.consumer_required.load(Ordering::Relaxed)
            || self.consumer_assigned.load(Ordering::Relaxed)
    }

    /// Age of the newest broker metadata in milliseconds (`None` if never fetched).
    pub(crate) fn broker_metadata_age_ms(&self) -> Option<i64> {
        let at = self.broker_metadata_at_ms.load(Ordering::Relaxed);
        (at > 0).then(|| chrono::Utc::now().timestamp_millis() - at)
    }

    /// Records why the consumer cannot connect to Kafka (`None`: it can, or no failure is known).
    pub(crate) fn set_kafka_error(&self, cause: Option<String>) {
        *self
            .kafka_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cause;
    }

    /// Why the consumer cannot connect to Kafka, if it cannot.
    pub fn kafka_error(&self) -> Option<String> {
        self.kafka_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records the outcome of a readiness check of the database: a failure's cause is logged
    /// when it differs from the previous check's, so that probes do not repeat it every time.
    pub(crate) fn database_checked(&self, outcome: Result<(), String>) {
        let mut last = self
            .database_check_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            Ok(()) => {
                if last.take().is_some() {
                    tracing::info!("readiness: the database answers again");
                }
            }
            Err(cause) => {
                if last.as_deref() != Some(cause.as_str()) {
                    tracing::warn!(%cause, "not ready: the database check failed");
                    *last = Some(cause);
                }
            }
        }
    }

    /// Whether a consumer runs in this process.
    pub(crate) fn consumer_required(&self) -> bool {
        self.consumer_required.load(Ordering::Relaxed)
    }
}
