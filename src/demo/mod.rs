//! `event-manager demo`: the whole product on one machine with nothing installed but Rust and
//! PostgreSQL's server binaries — an embedded Kafka-protocol broker, a private PostgreSQL
//! (unless `DATABASE_URL` is set), a feed of sample messages, the pipeline and the API.

pub mod feed;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::auth::MintError;
use crate::app::{App, AppError};
use crate::broker::{BrokerError, EmbeddedBroker};
use crate::config::{load_topic_rules, Config, ConfigError, LogFormat};
use crate::metrics::counter_total;
use crate::store::{LocalPostgres, LocalPostgresError};

/// Why the demo could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The private PostgreSQL did not start.
    #[error("private PostgreSQL: {0}")]
    Postgres(#[from] LocalPostgresError),
    /// The configuration (or the topic rules) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The embedded broker did not start or refused a topic.
    #[error("embedded broker: {0}")]
    Broker(#[from] BrokerError),
    /// The system gave no randomness for the token's secret.
    #[error("no system randomness for the demo token secret")]
    Randomness,
    /// The token could not be minted.
    #[error("demo token: {0}")]
    Token(#[from] MintError),
    /// The API's address could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address of `--bind`.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The application failed.
    #[error(transparent)]
    App(#[from] AppError),
    /// A start-up task panicked or was cancelled.
    #[error("a start-up task stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Options of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// HTTP address of the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,
    /// Sample messages produced per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Stop after this long (e.g. `30s`); runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

/// Runs the demo until Ctrl-C (or `--duration`).
pub async fn run(mut config: Config, args: DemoArgs) -> Result<(), DemoError> {
    config.log.format = LogFormat::Text;
    if std::env::var_os("RUST_LOG").is_none() {
        config.log.level = "warn".into();
    }
    crate::telemetry::init(&config.log);

    let _local_pg = if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        println!("EventDB: DATABASE_URL");
        None
    } else {
        println!("Starting a private PostgreSQL from the installed server binaries…");
        let pg = tokio::task::spawn_blocking(LocalPostgres::start).await??;
        config.database.url = pg.create_database("eventdb").await?.parse()?;
        println!(
            "EventDB: {} (removed when the demo stops)",
            config.database.url
        );
        Some(pg)
    };

    let rules = load_topic_rules(&config.pipeline.topics_dir)?;
    let broker = EmbeddedBroker::start(1)?;
    let mut topics = broker.create_rule_topics(&rules, None)?;
    for topic in feed::PATTERN_TOPICS {
        broker.create_topic(topic, 3)?;
        topics.push((*topic).to_owned());
    }
    config.kafka.bootstrap_servers = broker.bootstrap_servers();
    config.kafka.group_id = "event-manager-demo".into();
    config.http.bind = args.bind;
    let token = demo_token(&mut config.auth)?;
    println!(
        "Kafka (embedded): {} — topics: {}",
        config.kafka.bootstrap_servers,
        topics.join(", ")
    );

    let app = App::build(config.clone())?;
    let metrics = app.pipeline_metrics.clone();
    let listener = TcpListener::bind(args.bind)
        .await
        .map_err(|source| DemoError::Bind {
            addr: args.bind,
            source,
        })?;
    let shutdown = crate::shutdown::on_signal();
    if let Some(d) = args.duration {
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            s.cancel();
        });
    }

    println!(
        "API: http://{}  (/api/events, /healthz, /readyz, /metrics, /openapi.json)",
        args.bind
    );
    println!("Demo token (scope event:read, valid 12h): {token}");
    // The token rides in the fragment, which the browser never sends; the page removes it.
    println!("Console: http://{}/console#token={token}", args.bind);
    println!(
        "Try: curl -H 'Authorization: Bearer {token}' 'http://{}/api/events?page_size=5'",
        args.bind
    );
    println!(
        "Inspect the EventDB: psql '{}' -c 'SELECT entity_type, entity_id, properties FROM events ORDER BY inserted_at DESC LIMIT 10'",
        config.database.url.expose()
    );
    println!("Stop with Ctrl-C.\n");

    let formats: Vec<_> = rules.iter().map(|r| r.format).collect();
    let feed = tokio::spawn(produce_feed(
        config.kafka.clone(),
        feed::sources_for(&formats),
        args.rate,
        shutdown.clone(),
    ));
    let summary = tokio::spawn(print_summary(metrics, shutdown.clone()));

    let store = app.store.clone();
    let result = app.run(listener, shutdown.clone()).await;
    // Close the pools before the private PostgreSQL stops, so no connection sees it go.
    store.close();
    shutdown.cancel();
    let _ = feed.await;
    let _ = summary.await;
    drop(broker);
    println!();
    result?;
    Ok(())
}

/// Gives the demo a random HS256 secret (unless one is configured) and mints a token with it.
fn demo_token(auth: &mut crate::config::AuthConfig) -> Result<String, DemoError> {
    if auth.hs256_secret.is_none() {
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| DemoError::Randomness)?;
        auth.hs256_secret = Some(secret.iter().map(|b| format!("{b:02x}")).collect());
    }
    Ok(crate::api::auth::mint_token(
        auth,
        &[crate::api::config::READ_SCOPE.to_owned()],
        Duration::from_secs(12 * 3600),
        "demo",
    )?)
}

async fn produce_feed(
    kafka: crate::config::KafkaConfig,
    mut sources: Vec<Box<dyn feed::SampleSource>>,
    rate: u32,
    shutdown: CancellationToken,
) {
    if sources.is_empty() {
        return;
    }
    let producer = match crate::kafka::producer(
        &kafka,
        crate::kafka::Role::DemoFeed,
        &crate::kafka::ConnectionReporter::new(&kafka),
    ) {
        Ok(producer) => producer,
        Err(error) => {
            tracing::error!(error = %error, "demo feed: no producer, so no sample messages are sent");
            return;
        }
    };
    let mut rng = feed::Rng::new(0x5eed);
    let per_tick = (rate / 10).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut turn = 0usize;
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        for _ in 0..per_tick {
            let now = chrono::Utc::now();
            let n = sources.len();
            let sample = sources[turn % n].next(&mut rng, now);
            turn += 1;
            let mut headers = OwnedHeaders::new();
            for (k, v) in &sample.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut record = FutureRecord::<str, [u8]>::to(&sample.topic)
                .payload(&sample.payload)
                .headers(headers);
            if let Some(key) = &sample.key {
                record = record.key(key);
            }
            if let Err((e, _)) = producer.send(record, Duration::from_secs(5)).await {
                tracing::warn!(error = %e, "demo feed: produce failed");
            }
        }
    }
}

async fn print_summary(metrics: crate::metrics::PipelineMetrics, shutdown: CancellationToken) {
    let tty = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(if tty { 1 } else { 5 }));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let line = format!(
            "consumed {:>8} | selected {:>8} | events stored {:>7} | dead letters {:>5}",
            counter_total(&metrics.consumed),
            counter_total(&metrics.selected),
            counter_total(&metrics.events_stored),
            counter_total(&metrics.dead_letters),
        );
        let mut out = std::io::stdout().lock();
        if tty {
            let _ = write!(out, "\r{line}");
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}
