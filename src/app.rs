//! Assembly of the `run` command: store, migrations, metrics, pipeline and HTTP server, with
//! a shutdown bounded by one grace period. `demo` and the tests use the same pieces.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::admission::QuerySlots;
use crate::api::auth::Authenticator;
use crate::api::console::{self, ConsoleState};
use crate::api::webhooks::{self, Bridges};
use crate::api::{self, ApiState};
use crate::config::{load_topic_rules, Config, ConfigError};
use crate::formats::DecoderContext;
use crate::health::Readiness;
use crate::metrics::{
    ApiQueryMetrics, DbPoolMetrics, HttpMetrics, PipelineMetrics, TerminatorMetrics, WebhookMetrics,
};
use crate::pipeline::{self, PipelineError, RuleSet};
use crate::retry::RetryPolicy;
use crate::store::{EventStore, StoreError};
use crate::terminator::{LastRun, ScheduleError, Terminator, TerminatorSchedule};

/// Why the application could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Configuration or topic rules are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The EventDB is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pipeline could not start.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The webhook bridges' producer could not be created.
    #[error("webhook producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP server failed.
    #[error("http server on {addr}: {source}")]
    Http {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The terminator's schedule could not be set up.
    #[error(transparent)]
    Terminator(#[from] ScheduleError),
}

/// The assembled application, before it runs.
#[derive(Debug, Clone)]
pub struct App {
    /// Configuration.
    pub config: Config,
    /// Compiled topic rules.
    pub rules: Arc<RuleSet>,
    /// The EventDB.
    pub store: EventStore,
    /// The metrics registry.
    pub registry: Registry,
    /// Pipeline metrics.
    pub pipeline_metrics: PipelineMetrics,
    /// Readiness facts.
    pub readiness: Arc<Readiness>,
    /// Terminator metrics.
    pub terminator_metrics: TerminatorMetrics,
    /// The webhook bridges and their shared producer.
    pub bridges: Arc<Bridges>,
    /// HTTP request metrics.
    pub http_metrics: HttpMetrics,
    /// EventDB pool gauges.
    pub db_pool_metrics: DbPoolMetrics,
    /// The events API's query slots (`api.max_concurrent_queries`).
    pub query_slots: QuerySlots,
    /// Bearer-token verification for the events API.
    pub auth: Arc<Authenticator>,
    /// The last run of this process's terminator, which the console shows.
    pub terminator_runs: LastRun,
}

impl App {
    /// Loads topic rules and token keys, connects the store (lazily) and registers metrics.
    /// Without any token key (and without `auth.disabled`) the events API answers 401 to every
    /// request; the `run` command refuses to start in that case.
    pub fn build(config: Config) -> Result<Self, AppError> {
        let rules = Arc::new(RuleSet::compile_with(
            load_topic_rules(&config.pipeline.topics_dir)?,
            &DecoderContext {
                fhircast_sessions: config.webhooks.fhircast.session_ids(),
            },
        )?);
        let auth = Arc::new(Authenticator::from_config(&config.auth)?);
        let store = EventStore::connect(&config.database)?;
        let registry = Registry::new();
        let pipeline_metrics = PipelineMetrics::register(&registry)?;
        let terminator_metrics = TerminatorMetrics::register(&registry)?;
        let bridges = Arc::new(
            Bridges::new(
                &config.webhooks,
                &config.kafka,
                WebhookMetrics::register(&registry)?,
            )
            .map_err(AppError::Producer)?,
        );
        let http_metrics = HttpMetrics::register(&registry)?;
        let db_pool_metrics = DbPoolMetrics::register(&registry)?;
        let query_slots = QuerySlots::new(&config.api, ApiQueryMetrics::register(&registry)?);
        Ok(Self {
            config,
            rules,
            store,
            registry,
            pipeline_metrics,
            readiness: Arc::new(Readiness::for_consumer()),
            terminator_metrics,
            bridges,
            http_metrics,
            db_pool_metrics,
            query_slots,
            auth,
            terminator_runs: LastRun::default(),
        })
    }

    /// Applies migrations, retrying while the database is not reachable yet (e.g. during a
    /// rolling start), until `shutdown`.
    pub async fn migrate(&self, shutdown: &CancellationToken) -> Result<(), AppError> {
        let retry = RetryPolicy {
            max_backoff: Duration::from_secs(5),
            shutdown: shutdown.clone(),
        };
        let mut attempt = 0;
        loop {
            match migrate_store(&self.store, &self.config).await {
                Ok(applied) => {
                    for m in applied {
                        tracing::info!(migration = %m, "migration applied");
                    }
                    pipeline::Instruments::new(
                        self.pipeline_metrics.clone(),
                        self.readiness.clone(),
                    )
                    .emit(pipeline::DatabaseReachable);
                    return Ok(());
                }
                Err(e) if e.is_transient() && !shutdown.is_cancelled() && attempt < 30 => {
                    tracing::warn!(error = %e, attempt, "database not reachable yet; retrying");
                    retry.wait(attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Builds the missing indexes of `api.indexed_attributes` and `api.indexed_values`, and the
    /// GIN index on `properties` where `api.events_list_max_period_hours` allows lists longer
    /// than a day, in the background: the API and the pipeline do not wait, and queries use
    /// each index once it is valid.
    pub fn build_attribute_indexes(&self, shutdown: &CancellationToken) {
        let attributes = self.config.api.indexed_attributes.clone();
        let values = self.config.api.indexed_values.clone();
        let properties_index = crate::store::attribute_indexes::properties_index_needed(
            self.config.api.events_list_max_period_hours,
        );
        if attributes.is_empty() && values.is_empty() && !properties_index {
            return;
        }
        let store = self.store.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = store.ensure_api_indexes(&attributes, &values, properties_index) => match result {
                    Ok(report) => {
                        for (index, took) in report.built {
                            tracing::info!(%index, ?took, "index built");
                        }
                        if report.skipped_busy {
                            tracing::info!("another instance is building the API's indexes");
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "API indexes not built; lists filtered on their attributes read whole \
                         windows until a restart builds them"
                    ),
                },
            }
        });
    }

    /// The HTTP router for this application.
    pub fn router(&self) -> axum::Router {
        api::router_with(
            ApiState {
                store: self.store.clone(),
                registry: self.registry.clone(),
                readiness: self.readiness.clone(),
                api: Arc::new(self.config.api.clone()),
                auth: self.auth.clone(),
                http_metrics: self.http_metrics.clone(),
                db_pool_metrics: self.db_pool_metrics.clone(),
                query_slots: self.query_slots.clone(),
            },
            webhooks::router(self.bridges.clone()).merge(console::router(self.console_state())),
        )
    }

    /// What the operator console reads: this group's positions, the rules' dead-letter
    /// topics, the terminator.
    fn console_state(&self) -> ConsoleState {
        ConsoleState::new(
            self.store.clone(),
            self.auth.clone(),
            &self.config.kafka,
            self.rules
                .rules()
                .iter()
                .map(|r| r.rule.dead_letter_topic.clone())
                .collect(),
            self.config.terminator.clone(),
            self.terminator_runs.clone(),
            self.query_slots.clone(),
        )
    }

    /// Runs the pipeline, the terminator and the HTTP server on `listener` until `shutdown`,
    /// then stops them together within one `pipeline.shutdown_grace`: the consumer finishes and
    /// commits its batch, the terminator ends its run, the server drains.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        self.migrate(&shutdown).await?;
        self.build_attribute_indexes(&shutdown);
        let addr = listener.local_addr().map_err(|source| AppError::Http {
            addr: self.config.http.bind,
            source,
        })?;
        let http_stop = CancellationToken::new();
        let server = tokio::spawn(api::serve(listener, self.router(), http_stop.clone()));
        tracing::info!(%addr, "http server listening");

        let pipeline = pipeline::start(
            &self.config,
            self.rules.clone(),
            self.store.clone(),
            self.pipeline_metrics.clone(),
            self.readiness.clone(),
            shutdown.clone(),
        )?;
        let terminator = self.start_terminator(&shutdown).await?;

        shutdown.cancelled().await;
        // Everything stops at once, against one deadline: the consumer finishes and commits its
        // batch, a terminator run ends at its next batch boundary, the server finishes the
        // requests in flight. What has not stopped by then is abandoned with the process.
        http_stop.cancel();
        let grace = self.config.pipeline.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        let consumer = async {
            if tokio::time::timeout_at(deadline, pipeline.stopped())
                .await
                .is_err()
            {
                tracing::warn!(?grace, "consumer did not stop within the grace period");
            }
        };
        let terminator = async {
            let Some(terminator) = terminator else {
                return;
            };
            match tokio::time::timeout_at(deadline, terminator.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "terminator schedule did not stop cleanly")
                }
                Err(_) => tracing::warn!(?grace, "terminator did not stop within the grace period"),
            }
        };
        let http = async {
            match tokio::time::timeout_at(deadline, server).await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "http server task failed");
                    Ok(())
                }
                Err(_) => {
                    tracing::warn!(?grace, "http server did not drain within the grace period");
                    Ok(())
                }
            }
        };
        let ((), (), http) = tokio::join!(consumer, terminator, http);
        http.map_err(|source| AppError::Http { addr, source })?;
        tracing::info!("stopped");
        Ok(())
    }
}

impl App {
    /// Schedules the terminator when `[terminator] enabled`; its runs stop at the next batch
    /// boundary once `shutdown` is cancelled.
    pub async fn start_terminator(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<TerminatorSchedule>, AppError> {
        let config = &self.config.terminator;
        if !config.enabled {
            tracing::info!("terminator disabled");
            return Ok(None);
        }
        let terminator = Terminator::new(
            self.store.clone(),
            config.clone(),
            self.terminator_metrics.clone(),
        )
        .recording_to(self.terminator_runs.clone());
        let schedule = TerminatorSchedule::start(terminator, &config.schedule, shutdown.clone());
        Ok(Some(schedule.await?))
    }
}

/// Applies the schema migrations, then the data migrations that need the configuration
/// (`sql/V9__data_migrations.sql`); what was applied. `run` and `migrate` both call it.
pub async fn migrate_store(store: &EventStore, config: &Config) -> Result<Vec<String>, StoreError> {
    let mut applied = store.migrate().await?;
    let sessions = config.webhooks.fhircast.session_ids();
    if let Some(n) = store
        .rekey_fhircast_sessions(&|id| sessions.rekey(id))
        .await?
    {
        applied.push(format!(
            "data migration fhircast_session_ids ({n} FHIRcast entity ids rewritten)"
        ));
    }
    Ok(applied)
}

/// `event-manager run`.
pub async fn run(config: Config) -> Result<(), AppError> {
    crate::telemetry::init(&config.log);
    let app = App::build(config)?;
    // Secure by default: the events API does not start without a way to verify tokens.
    app.config.auth.require_key()?;
    let bind = app.config.http.bind;
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|source| AppError::Http { addr: bind, source })?;
    let shutdown = crate::shutdown::on_signal();
    app.run(listener, shutdown).await
}
