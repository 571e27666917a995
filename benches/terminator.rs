//! Terminator macro-benchmark: delete 1 M expired events out of 2 M while ingestion runs, and
//! report the delete time and what it costs ingestion.
//!
//! ```text
//! cargo bench --bench terminator                        # private PostgreSQL, 2 M rows
//! DATABASE_URL=postgres://u@h/postgres cargo bench --bench terminator
//! BENCH_ROWS=200000 BENCH_BATCH=5000 BENCH_PAUSE_MS=0 BENCH_WRITERS=2 cargo bench --bench terminator
//! ```
//!
//! Phases: seed `BENCH_ROWS` events with binary COPY (half inserted 31–60 days ago, half within
//! the last 29 days; UUID v7 ids matching `inserted_at`, as ingestion writes them), VACUUM
//! ANALYZE; ingestion alone for `BENCH_BASELINE_SECS`; one terminator run (age rule 30 days,
//! count rule off) with ingestion still running; ingestion alone again. Ingestion is
//! `BENCH_WRITERS` tasks, each committing transactions of 500 events through
//! `EventStore::apply_batch`. The drop is measured against the mean of
//! the two baselines, which absorbs some of the noise of a shared machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use event_manager::config::DatabaseConfig;
use event_manager::detect::DetectedEvent;
use event_manager::metrics::TerminatorMetrics;
use event_manager::model::SourceRef;
use event_manager::store::{BatchChanges, EventStore, LocalPostgres, NewEvent};
use event_manager::terminator::{Terminator, TerminatorConfig};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use uuid::{NoContext, Timestamp, Uuid};

/// As the service (src/main.rs): measured with the allocator it runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INGEST_BATCH: usize = 500;
const DAY: i64 = 86_400;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn v7_at(at: DateTime<Utc>, counter: u64) -> Uuid {
    // Distinct ids for equal instants: the counter goes into the random bits.
    let ts = Timestamp::from_unix(
        NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    let base = Uuid::new_v7(ts).as_u128();
    Uuid::from_u128((base & !0xFFFF_FFFF_FFFF) | u128::from(counter & 0xFFFF_FFFF_FFFF))
}

fn properties(i: u64) -> serde_json::Value {
    let statuses = ["active", "terminated", "pending_verification", "closed"];
    serde_json::json!({
        "status": {
            "new_value": statuses[(i % 4) as usize],
            "old_value": statuses[((i + 1) % 4) as usize],
        },
        "employee_id": {"new_value": Uuid::from_u128(u128::from(i) * 7919).to_string()},
    })
}

async fn seed(client: &mut tokio_postgres::Client, rows: u64) -> anyhow::Result<()> {
    let now = Utc::now();
    let half = rows / 2;
    let tx = client.transaction().await?;
    let sink = tx
        .copy_in(
            "COPY events (id, event_type, entity_type, entity_id, properties, event_time, \
             changed_by, inserted_at, source_topic, source_partition, source_offset, source_seq) \
             FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::JSONB,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::INT4,
            Type::INT8,
            Type::INT4,
        ],
    );
    pin_mut!(writer);
    let entity_types = [
        "Declaration",
        "EmployeeRequest",
        "MedicationRequest",
        "Episode",
    ];
    for i in 0..rows {
        // Expired half first (as it was inserted first in real life), spread over 31..60 days
        // ago; the live half over the last 29 days.
        let inserted_at = if i < half {
            now - chrono::Duration::seconds(60 * DAY - (i as i64 * 29 * DAY) / half as i64)
        } else {
            now - chrono::Duration::seconds(29 * DAY - ((i - half) as i64 * 29 * DAY) / half as i64)
        };
        let id = v7_at(inserted_at, i);
        let entity_id = Uuid::from_u128(u128::from(i % 400_000) << 17).to_string();
        let changed_by = Uuid::from_u128(u128::from(i % 5_000)).to_string();
        writer
            .as_mut()
            .write(&[
                &id,
                &"StatusChangeEvent",
                &entity_types[(i % 4) as usize],
                &entity_id,
                &properties(i),
                &inserted_at,
                &changed_by,
                &inserted_at,
                &"event_manager_topic",
                &((i % 12) as i32),
                &(i as i64),
                &0i32,
            ])
            .await?;
    }
    writer.finish().await?;
    tx.commit().await?;
    Ok(())
}

/// One writer: transactions of `INGEST_BATCH` events, written as ingestion writes them
/// (`EventStore::apply_batch`, without fences or entity state).
async fn ingest(
    store: EventStore,
    writer: i32,
    inserted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let topic: Arc<str> = format!("ingest-{writer}").into();
    let mut offset: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let now = Utc::now();
        let events = (0..INGEST_BATCH as u64)
            .map(|i| NewEvent {
                event: DetectedEvent {
                    event_type: "StatusChangeEvent".to_owned(),
                    entity_type: "Declaration".to_owned(),
                    entity_id: Uuid::now_v7().to_string(),
                    properties: properties(i),
                    event_time: now,
                    changed_by: Some("e1453f4c-1077-4e85-8c98-c13ffca0063e".to_owned()),
                },
                source: SourceRef {
                    topic: topic.clone(),
                    partition: writer,
                    offset: offset + i as i64,
                },
                seq: 0,
            })
            .collect();
        offset += INGEST_BATCH as i64;
        let report = store
            .apply_batch("bench", &[], &[], |_| BatchChanges {
                events,
                states: Vec::new(),
            })
            .await?;
        inserted.fetch_add(report.events_inserted, Ordering::Relaxed);
    }
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Ingestion rate over `window`, rows per second.
async fn rate_over(inserted: &AtomicU64, window: Duration) -> f64 {
    let before = inserted.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    (inserted.load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let rows: u64 = env_or("BENCH_ROWS", 2_000_000);
    let batch: u32 = env_or("BENCH_BATCH", 10_000);
    let writers: i32 = env_or("BENCH_WRITERS", 2);
    let baseline = Duration::from_secs(env_or("BENCH_BASELINE_SECS", 15));
    let pause = Duration::from_millis(env_or("BENCH_PAUSE_MS", 20));

    let local;
    let server_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            local = LocalPostgres::start()?;
            local.url("postgres")
        }
    };
    let name = format!("bench_terminator_{}", Uuid::now_v7().simple());
    connect(&server_url)
        .await?
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut url: url::Url = server_url.parse()?;
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let store = EventStore::connect(&DatabaseConfig {
        url: url.parse()?,
        ..DatabaseConfig::default()
    })?;
    store.migrate().await?;

    let mut client = connect(&url).await?;
    let t = Instant::now();
    seed(&mut client, rows).await?;
    client.batch_execute("VACUUM ANALYZE events").await?;
    println!(
        "seeded {rows} events in {:.1?} (binary COPY + VACUUM ANALYZE)",
        t.elapsed()
    );

    let inserted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        tasks.push(tokio::spawn(ingest(
            store.clone(),
            w,
            inserted.clone(),
            stop.clone(),
        )));
    }
    // Let the writers warm up (prepared statements, caches) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rate_over(&inserted, baseline).await;
    println!("ingestion alone (before): {before:.0} events/s");

    let terminator = Terminator::new(
        store.clone(),
        TerminatorConfig {
            event_max_time: Some(Duration::from_secs(30 * DAY as u64)),
            event_max_number: None,
            batch_size: batch,
            batch_pause: pause,
            ..TerminatorConfig::default()
        },
        TerminatorMetrics::register(&prometheus::Registry::new())?,
    );
    let count_before = inserted.load(Ordering::Relaxed);
    let started = Instant::now();
    let report = terminator
        .run_once(false, &CancellationToken::new())
        .await?;
    let delete_time = started.elapsed();
    let during =
        (inserted.load(Ordering::Relaxed) - count_before) as f64 / delete_time.as_secs_f64();

    let after = rate_over(&inserted, baseline).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE inserted_at < now() - interval '30 days'",
            &[],
        )
        .await?
        .get(0);

    let reference = (before + after) / 2.0;
    println!("ingestion alone (after):  {after:.0} events/s");
    println!(
        "terminator: {report} in {delete_time:.1?} ({:.0} rows/s, batch_size {batch}, batch_pause {pause:?}); expired left: {left}",
        report.deleted_by_age as f64 / delete_time.as_secs_f64()
    );
    println!(
        "ingestion during the delete: {during:.0} events/s, {:.1} % below the mean baseline of {reference:.0}",
        100.0 * (1.0 - during / reference)
    );

    drop(client);
    drop(store);
    connect(&server_url)
        .await?
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    Ok(())
}
