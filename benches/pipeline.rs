//! End-to-end pipeline benchmark: ESOZ messages through the embedded Kafka-protocol broker into
//! PostgreSQL, produced while the pipeline consumes (the embedded broker keeps only the newest
//! ~5 MiB per partition). Reports stored messages per second and peak memory.
//!
//! `cargo bench --bench pipeline` (env: `EM_BENCH_MESSAGES`, default 100000 per run;
//! `DATABASE_URL` to use an existing server, else a private one is started;
//! `EM_BENCH_INDEXED_ATTRIBUTES=employee_id,status` to ingest with those attributes' own
//! indexes, `api.indexed_attributes`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::app::App;
use event_manager::broker::EmbeddedBroker;
use event_manager::config::Config;
use event_manager::demo::feed::{EsozSamples, Rng, SampleSource};
use event_manager::metrics::counter_total;
use event_manager::pipeline;
use event_manager::store::LocalPostgres;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

/// As the service (src/main.rs): measured with the allocator it runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn run_once(base_url: &str, partitions: i32, messages: u64, batch_size: usize) {
    let db = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let (admin, conn) = tokio_postgres::connect(base_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let mut url: url::Url = base_url.parse().unwrap();
    url.set_path(&format!("/{db}"));

    let broker = EmbeddedBroker::start(1).unwrap();
    broker
        .create_topic("event_manager_topic", partitions)
        .unwrap();
    broker.create_topic("event_manager_topic.dlq", 1).unwrap();
    let topics = tempfile::tempdir().unwrap();
    std::fs::write(
        topics.path().join("esoz.toml"),
        "[[topic]]\nname = \"event_manager_topic\"\nformat = \"esoz\"\ndead_letter_topic = \"event_manager_topic.dlq\"\ncapture = [\"employee_id\"]\n",
    )
    .unwrap();
    let mut config = Config::default();
    config.kafka.bootstrap_servers = broker.bootstrap_servers();
    config.database.url = url.to_string();
    config.database.pool_size = 4;
    config.pipeline.topics_dir = topics.path().to_owned();
    config.pipeline.batch_size = batch_size;
    config.pipeline.batch_linger = Duration::from_millis(50);
    config.api.indexed_attributes = event_manager::api::config::split_names(
        &std::env::var("EM_BENCH_INDEXED_ATTRIBUTES").unwrap_or_default(),
    );

    let app = App::build(config).unwrap();
    app.migrate(&CancellationToken::new()).await.unwrap();
    // Built before the run (the table is empty), so that every write maintains them.
    for (index, _) in app
        .store
        .ensure_attribute_indexes(&app.config.api.indexed_attributes)
        .await
        .unwrap()
        .built
    {
        println!("  with index {index}");
    }
    let metrics = app.pipeline_metrics.clone();
    let stop = CancellationToken::new();
    let handle = pipeline::start(
        &app.config,
        app.rules.clone(),
        app.store.clone(),
        metrics.clone(),
        Arc::clone(&app.readiness),
        stop.clone(),
    )
    .unwrap();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap();
    let mut samples = EsozSamples::default();
    let mut rng = Rng::new(7);
    let mut produced = 0u64;
    let mut started: Option<Instant> = None;
    let mut partition = 0;
    while produced < messages {
        // Stay within what the embedded broker retains per partition.
        while produced - counter_total(&metrics.consumed) > 8_000 * partitions as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut sends = Vec::with_capacity(1000);
        for _ in 0..1000.min(messages - produced) {
            let s = samples.next(&mut rng, chrono::Utc::now());
            let p = partition % partitions;
            partition += 1;
            let producer = &producer;
            sends.push(async move {
                let record = FutureRecord::<str, [u8]>::to(&s.topic)
                    .partition(p)
                    .payload(&s.payload);
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            });
            produced += 1;
        }
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
        if started.is_none() && counter_total(&metrics.consumed) > 0 {
            started = Some(Instant::now());
        }
    }
    let started = started.unwrap_or_else(Instant::now);
    while counter_total(&metrics.consumed) < messages {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Wait for the last batch's commit.
    let client = app.store.client().await.unwrap();
    loop {
        let stored: i64 = client
            .query_one(
                "SELECT COALESCE(SUM(next_offset),0)::bigint FROM consumer_offsets",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if stored as u64 >= messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    handle.stopped().await;
    let events = counter_total(&metrics.events_stored);
    println!(
        "pipeline/{partitions}-partition(s) batch={batch_size}: {} messages in {:.2?} = {:.0} msg/s stored ({} events, {:.0} events/s); peak RSS {} MiB",
        messages,
        elapsed,
        messages as f64 / elapsed.as_secs_f64(),
        events,
        events as f64 / elapsed.as_secs_f64(),
        peak_rss_kib() / 1024,
    );
    drop(client);
    drop(app);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a tiny smoke size.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let messages: u64 = std::env::var("EM_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 2_000 } else { 100_000 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let local;
    let base_url = match std::env::var("DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            local = LocalPostgres::start().expect("PostgreSQL server binaries");
            local.url("postgres")
        }
    };
    runtime.block_on(async {
        run_once(&base_url, 6, messages, 1000).await;
        run_once(&base_url, 1, messages, 1000).await;
    });
}
