//! Prometheus metrics: one struct per subsystem, registered into a [`Registry`] that is passed in.
//! All names carry the `event_manager_` prefix.

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Metrics of the consume → decode → select → detect → store path.
#[derive(Debug, Clone)]
pub struct PipelineMetrics {
    /// Messages read, by topic.
    pub consumed: IntCounterVec,
    /// Messages the topic's selector accepted, by topic.
    pub selected: IntCounterVec,
    /// Messages the topic's selector did not accept, by topic.
    pub not_selected: IntCounterVec,
    /// Messages that could not be decoded, by topic and reason code.
    pub decode_errors: IntCounterVec,
    /// Messages sent to a dead-letter topic, by source topic.
    pub dead_letters: IntCounterVec,
    /// Decoder notes (ignored types etc.), by topic and note.
    pub decode_notes: IntCounterVec,
    /// Attribute observations by outcome (baseline, unchanged, stale, changed, tombstoned).
    pub observations: IntCounterVec,
    /// Events stored, by entity type.
    pub events_stored: IntCounterVec,
    /// Batch processing time (decode to database commit), seconds.
    pub batch_duration: Histogram,
    /// Batches by result (committed, fenced, retried, and rolled back to be stored again at
    /// once: predecessor_failed, handover_stale, state_moved).
    pub batches: IntCounterVec,
    /// Entities of committed batches by where their state came from: `recalled` from the
    /// state cache, `read` from the EventDB.
    pub state_cache_entities: IntCounterVec,
    /// Consumer lag in messages, by topic and partition.
    pub consumer_lag: IntGaugeVec,
    /// Partitions currently assigned to this process.
    pub assigned_partitions: IntGauge,
    /// 1 while the database accepts batches, 0 during an outage.
    pub database_up: IntGauge,
    /// Messages skipped because they were already stored (re-deliveries).
    pub redelivered: IntCounter,
    /// Messages removed by the broker's retention before this group read them, by topic and
    /// partition (the consumer found its next offset below the partition's log start).
    pub retention_gap: IntCounterVec,
    /// Status context events without a status, by look-up result (found, not_found, timeout,
    /// failed, not_configured).
    pub status_lookups: IntCounterVec,
}

impl PipelineMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        Ok(Self {
            consumed: counter(
                "event_manager_messages_consumed_total",
                "Messages read from Kafka.",
                &["topic"],
            )?,
            selected: counter(
                "event_manager_messages_selected_total",
                "Messages accepted by the topic's selector.",
                &["topic"],
            )?,
            not_selected: counter(
                "event_manager_messages_not_selected_total",
                "Messages the topic's selector did not accept.",
                &["topic"],
            )?,
            decode_errors: counter(
                "event_manager_decode_errors_total",
                "Messages that could not be decoded.",
                &["topic", "reason"],
            )?,
            dead_letters: counter(
                "event_manager_dead_letters_total",
                "Messages sent to a dead-letter topic.",
                &["topic"],
            )?,
            decode_notes: counter(
                "event_manager_decode_notes_total",
                "Accepted messages worth noting (e.g. ignored event types).",
                &["topic", "note"],
            )?,
            observations: counter(
                "event_manager_observations_total",
                "Attribute observations by change-detection outcome.",
                &["outcome"],
            )?,
            events_stored: counter(
                "event_manager_events_stored_total",
                "Status-change events stored in the EventDB.",
                &["entity_type"],
            )?,
            batches: counter(
                "event_manager_batches_total",
                "Batches by result.",
                &["result"],
            )?,
            state_cache_entities: counter(
                "event_manager_state_cache_entities_total",
                "Entities of committed batches by where their state came from (recalled, read).",
                &["source"],
            )?,
            status_lookups: counter(
                "event_manager_status_lookups_total",
                "Status context events without a status, by FHIR look-up result.",
                &["result"],
            )?,
            batch_duration: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "event_manager_batch_duration_seconds",
                        "Time to process and commit one batch.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                ),
            )?,
            consumer_lag: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "event_manager_consumer_lag",
                        "Messages between the high watermark and the consumer position.",
                    ),
                    &["topic", "partition"],
                ),
            )?,
            assigned_partitions: registered(
                registry,
                IntGauge::new(
                    "event_manager_assigned_partitions",
                    "Partitions assigned to this process.",
                ),
            )?,
            database_up: registered(
                registry,
                IntGauge::new(
                    "event_manager_database_up",
                    "1 while the EventDB accepts batches.",
                ),
            )?,
            redelivered: registered(
                registry,
                IntCounter::new(
                    "event_manager_messages_redelivered_total",
                    "Messages skipped because they were already stored.",
                ),
            )?,
            retention_gap: counter(
                "event_manager_retention_gap_messages_total",
                "Messages removed by retention before the group read them.",
                &["topic", "partition"],
            )?,
        })
    }
}

/// Buckets of the batch and webhook produce durations, seconds.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers a newly made metric and hands it back.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> prometheus::Result<M> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// The sum of a counter over all its label values (for summaries and benchmarks).
pub(crate) fn counter_total(counter: &IntCounterVec) -> u64 {
    counter
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().value() as u64)
        .sum()
}

/// Metrics of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// Request duration by route template, method and status.
    pub request_duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "event_manager_http_request_duration_seconds",
                "HTTP request duration.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route", "method", "status"],
        );
        Ok(Self {
            request_duration: registered(registry, request_duration)?,
        })
    }
}

/// Metrics of the terminator (retention runs).
#[derive(Debug, Clone)]
pub struct TerminatorMetrics {
    /// Rows deleted, by reason (`age`, `count`, `state`).
    pub deleted: IntCounterVec,
    /// Duration of runs that took the lock, seconds.
    pub duration: Histogram,
    /// Unix time of the last successful run.
    pub last_success: Gauge,
    /// Unix time of the last failed run.
    pub last_failure: Gauge,
    /// Runs by result (`success`, `failure`, `skipped`, `interrupted`).
    pub runs: IntCounterVec,
}

impl TerminatorMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramOpts::new(
            "event_manager_terminator_duration_seconds",
            "Duration of terminator runs that took the lock.",
        )
        .buckets(vec![
            0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        ]);
        Ok(Self {
            deleted: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "event_manager_terminator_deleted_total",
                        "Rows deleted by the terminator, by reason (age, count, state).",
                    ),
                    &["reason"],
                ),
            )?,
            duration: registered(registry, Histogram::with_opts(duration))?,
            last_success: registered(
                registry,
                Gauge::new(
                    "event_manager_terminator_last_success_timestamp_seconds",
                    "Unix time of the last successful terminator run.",
                ),
            )?,
            last_failure: registered(
                registry,
                Gauge::new(
                    "event_manager_terminator_last_failure_timestamp_seconds",
                    "Unix time of the last failed terminator run.",
                ),
            )?,
            runs: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "event_manager_terminator_runs_total",
                        "Terminator runs by result (success, failure, skipped, interrupted).",
                    ),
                    &["result"],
                ),
            )?,
        })
    }
}

/// Metrics of the webhook bridges.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    /// Requests by bridge (`sfs`, `fhircast`) and result (`accepted`, `verified`,
    /// `bad_request`, `unauthorized`, `not_found`, `forbidden`, `too_large`,
    /// `unsupported_media_type`, `unavailable`, …).
    pub requests: IntCounterVec,
    /// Time from produce to the broker's acknowledgement (or failure), by bridge.
    pub produce_duration: HistogramVec,
}

impl WebhookMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let produce_duration = HistogramOpts::new(
            "event_manager_webhook_produce_duration_seconds",
            "Time until the broker acknowledged a bridged message (or the produce failed).",
        )
        .buckets(LATENCY_BUCKETS.to_vec());
        Ok(Self {
            requests: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "event_manager_webhook_requests_total",
                        "Webhook bridge requests by bridge and result.",
                    ),
                    &["bridge", "result"],
                ),
            )?,
            produce_duration: registered(
                registry,
                HistogramVec::new(produce_duration, &["bridge"]),
            )?,
        })
    }
}

/// Gauges of the EventDB connection pool, refreshed when `/metrics` is scraped.
#[derive(Debug, Clone)]
pub struct DbPoolMetrics {
    /// Connections by pool (`ingest`: ingestion, terminator, migrations; `api`: the query API)
    /// and state: `size` (open), `available` (idle), `waiting` (callers queued).
    pub connections: IntGaugeVec,
}

impl DbPoolMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let connections = IntGaugeVec::new(
            Opts::new(
                "event_manager_db_pool_connections",
                "EventDB pool connections by pool (ingest, api) and state (size, available, waiting).",
            ),
            &["pool", "state"],
        );
        Ok(Self {
            connections: registered(registry, connections)?,
        })
    }

    /// Records the pool's current state.
    pub(crate) fn observe(&self, pool: &str, size: usize, available: usize, waiting: usize) {
        for (state, n) in [
            ("size", size),
            ("available", available),
            ("waiting", waiting),
        ] {
            self.connections
                .with_label_values(&[pool, state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Metrics of the events API's query slots (`api.max_concurrent_queries`).
#[derive(Debug, Clone)]
pub struct ApiQueryMetrics {
    /// How long queries waited for a slot, seconds (those that got one).
    pub queue_wait: Histogram,
    /// Requests answered 503 because no slot was free within `api.query_queue_timeout`.
    pub rejected: IntCounter,
    /// Requests answered by a query another request started (identical queries waiting at once).
    pub shared: IntCounter,
}

impl ApiQueryMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let queue_wait = Histogram::with_opts(
            HistogramOpts::new(
                "event_manager_api_query_queue_seconds",
                "Time an events API query waited for a slot (api.max_concurrent_queries).",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0,
            ]),
        );
        let rejected = IntCounter::new(
            "event_manager_api_queries_rejected_total",
            "Events API requests answered 503 because no query slot was free in time.",
        );
        let shared = IntCounter::new(
            "event_manager_api_queries_shared_total",
            "Events API list requests answered by an identical query that was waiting for its \
             slot when they arrived, instead of a query of their own.",
        );
        Ok(Self {
            queue_wait: registered(registry, queue_wait)?,
            rejected: registered(registry, rejected)?,
            shared: registered(registry, shared)?,
        })
    }
}
