//! Load benchmark of the events API through the real HTTP server.
//!
//! Seeds `EM_BENCH_EVENTS` events (default 10 000 000) by binary COPY — secondary indexes are
//! dropped for the load and rebuilt from their own definitions afterwards — at
//! `EM_BENCH_EVENTS_PER_HOUR` (default 5 000) ending now, then serves the router on a port-0
//! listener and runs `EM_BENCH_CONCURRENCY` (default 32) keep-alive clients for
//! `EM_BENCH_SECONDS` (default 10) per scenario, printing p50/p99 latency, requests/s and the
//! CPU time per request of this process (server and load generator) and PostgreSQL.
//!
//! Runs on `DATABASE_URL` when set (the database it fills, `em_bench_<events>`, is reused by later
//! runs), else on a private throwaway PostgreSQL.
//!
//! `EM_BENCH_ONLY=<text>` runs only the scenarios whose name contains the text.
//! `EM_BENCH_INDEXED_ATTRIBUTES=rare_attr,employee_id` gives those attributes their own indexes
//! (`api.indexed_attributes`), built before the run; `EM_BENCH_INDEXED_VALUES` (default `status`,
//! as `api.indexed_values`; empty for none) the index of their values only. The server has a
//! query slot per core (`api.max_concurrent_queries`): nothing else runs beside it. Each
//! request runs its own query (`api.share_queries` off) unless `EM_BENCH_SHARE_QUERIES=1`.
//!
//! `EM_BENCH_EVENTS=1000000 cargo bench --bench api`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use event_manager::api::admission::QuerySlots;
use event_manager::api::auth::{mint_token, Authenticator};
use event_manager::api::{self, ApiState};
use event_manager::config::{ApiConfig, AuthConfig, DatabaseConfig};
use event_manager::health::Readiness;
use event_manager::metrics::{ApiQueryMetrics, DbPoolMetrics, HttpMetrics};
use event_manager::store::{EventStore, LocalPostgres};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::NoTls;

#[path = "common/http_load.rs"]
mod http_load;
use http_load::{load, percentile};

/// As the service (src/main.rs): measured with the allocator it runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

const ENTITY_TYPES: [&str; 5] = [
    "Declaration",
    "EmployeeRequest",
    "MedicationRequest",
    "Episode",
    "Encounter",
];
const STATUSES: [&str; 4] = ["active", "terminated", "APPROVED", "REJECTED"];

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn seed(url: &str, n: u64, per_hour: u64, end: DateTime<Utc>) -> Result<(), BoxError> {
    let client = connect(url).await?;
    let have: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .get(0);
    if have == n as i64 {
        println!("reusing {n} seeded events");
        return Ok(());
    }
    client.batch_execute("TRUNCATE events").await?;
    let indexes: Vec<(String, String)> = client
        .query(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i \
             WHERE i.tablename = 'events' AND NOT EXISTS \
               (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, _) in &indexes {
        client.batch_execute(&format!("DROP INDEX {name}")).await?;
    }
    let started = Instant::now();
    let sink = client
        .copy_in(
            "COPY events (id, event_type, entity_type, entity_id, properties, event_time, \
             changed_by, source_topic, source_partition, source_offset, source_seq) \
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
            Type::TEXT,
            Type::INT4,
            Type::INT8,
            Type::INT4,
        ],
    );
    pin_mut!(writer);
    let step_us = 3_600_000_000 / per_hour as i64;
    let start = end - chrono::Duration::microseconds(step_us * n as i64);
    let mut rng = Rng(0x5eed_cafe);
    for i in 0..n {
        let r = rng.next();
        let time = start + chrono::Duration::microseconds(step_us * i as i64);
        let entity_type = ENTITY_TYPES[(r % 5) as usize];
        let event_type = if r % 10 == 0 {
            "StateChangeEvent"
        } else {
            "StatusChangeEvent"
        };
        let mut properties = serde_json::json!({
            "status": {"new_value": STATUSES[((r >> 8) % 4) as usize], "old_value": STATUSES[((r >> 16) % 4) as usize]}
        });
        if entity_type == "EmployeeRequest" {
            properties["employee_id"] =
                serde_json::json!({"new_value": format!("emp-{}", r % 10_000)});
        }
        if r % 1000 == 7 {
            properties["rare_attr"] = serde_json::json!({"new_value": "x"});
        }
        let millis = time.timestamp_millis() as u64;
        let mut random = [0u8; 10];
        random.copy_from_slice(&(u128::from(r) ^ u128::from(i)).to_le_bytes()[..10]);
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        writer
            .as_mut()
            .write(&[
                &id,
                &event_type,
                &entity_type,
                &format!("{entity_type}-{}", r % 1_000_000),
                &properties,
                &time,
                &Some("bench-user"),
                &"bench",
                &0i32,
                &(i as i64),
                &0i32,
            ])
            .await?;
        if i > 0 && i % 1_000_000 == 0 {
            println!("  copied {i} rows ({:.0?})", started.elapsed());
        }
    }
    writer.finish().await?;
    println!("copied {n} rows in {:.1?}", started.elapsed());
    for (name, def) in &indexes {
        let t = Instant::now();
        client.batch_execute(def).await?;
        println!("  index {name} rebuilt in {:.1?}", t.elapsed());
    }
    println!("seeded in {:.1?}", started.elapsed());
    Ok(())
}

/// CPU time (user + system) used so far by this process (server, load generator) and by every
/// PostgreSQL process (including exited backends, counted in their parent's children times),
/// from `/proc`; zero where `/proc` is unavailable. Per request it stays comparable when another
/// job shares the machine, unlike requests/s.
fn cpu_time() -> (Duration, Duration) {
    let ticks_per_second = 100.0; // USER_HZ on Linux
                                  // (command, own utime + stime, children's cutime + cstime)
    let stat_ticks = |stat: &str| -> Option<(String, u64, u64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state is field 3, utime 14, stime 15, cutime 16 and cstime 17
        // (1-based, man proc).
        let field = |i: usize| -> Option<u64> { fields.get(i)?.parse().ok() };
        Some((comm, field(11)? + field(12)?, field(13)? + field(14)?))
    };
    let mut own = 0;
    if let Some((_, t, _)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_ticks(&s))
    {
        own += t;
    }
    let mut pg = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some((comm, t, children)) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| stat_ticks(&s))
            {
                if comm == "postgres" {
                    pg += t + children;
                }
            }
        }
    }
    let secs = |ticks: u64| Duration::from_secs_f64(ticks as f64 / ticks_per_second);
    (secs(own), secs(pg))
}

async fn run() -> Result<(), BoxError> {
    let n: u64 = env_or("EM_BENCH_EVENTS", 10_000_000);
    let per_hour: u64 = env_or("EM_BENCH_EVENTS_PER_HOUR", 5_000);
    let concurrency: usize = env_or("EM_BENCH_CONCURRENCY", 32);
    let seconds: u64 = env_or("EM_BENCH_SECONDS", 10);
    let pool_size: usize = env_or("EM_BENCH_POOL_SIZE", 8);

    let mut local = None;
    let (admin_url, url) = match std::env::var("DATABASE_URL") {
        Ok(u) if !u.is_empty() => {
            let mut base: url::Url = u.parse()?;
            base.set_path("/postgres");
            let admin = base.to_string();
            base.set_path(&format!("/em_bench_{n}"));
            (admin, base.to_string())
        }
        _ => {
            let pg = tokio::task::spawn_blocking(LocalPostgres::start).await??;
            let urls = (pg.url("postgres"), pg.url(&format!("em_bench_{n}")));
            local = Some(pg);
            urls
        }
    };
    let admin = connect(&admin_url).await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&format!("em_bench_{n}")],
        )
        .await?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE em_bench_{n}"))
            .await?;
    }
    let store = EventStore::connect(&DatabaseConfig {
        url: url.parse()?,
        pool_size,
        ..DatabaseConfig::default()
    })?;
    store.migrate().await?;
    let end = Utc::now();
    seed(&url, n, per_hour, end).await?;
    // Attributes with their own indexes (`api.indexed_attributes`), and those with only the
    // index of their values (`api.indexed_values`, default `status` as in a deployment),
    // comma-separated.
    let indexed = event_manager::api::config::split_names(
        &std::env::var("EM_BENCH_INDEXED_ATTRIBUTES").unwrap_or_default(),
    );
    let indexed_values = std::env::var("EM_BENCH_INDEXED_VALUES").map_or_else(
        |_| ApiConfig::default().indexed_values,
        |names| event_manager::api::config::split_names(&names),
    );
    for (index, took) in store
        .ensure_api_indexes(&indexed, &indexed_values, false)
        .await?
        .built
    {
        println!("  index {index} built in {took:.1?}");
    }
    // The steady state of a running EventDB, where autovacuum has visited the tables written
    // in bulk (events, and the count tables its triggers and the migrations filled): visibility
    // maps set and statistics taken. Quick when nothing changed since the last run.
    let t = Instant::now();
    connect(&url).await?.batch_execute("VACUUM ANALYZE").await?;
    println!("vacuumed in {:.1?}", t.elapsed());
    let end: DateTime<Utc> = connect(&url)
        .await?
        .query_one("SELECT max(event_time) FROM events", &[])
        .await?
        .get(0);

    let auth = AuthConfig {
        hs256_secret: Some("bench-secret-bench-secret-bench-secret".into()),
        ..AuthConfig::default()
    };
    let registry = prometheus::Registry::new();
    // A query slot per core: the API alone, with no ingestion to leave half of them to
    // (`api.max_concurrent_queries`' default), as its figures before that default were taken.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let api_config = ApiConfig {
        indexed_attributes: indexed.clone(),
        indexed_values: indexed_values.clone(),
        max_concurrent_queries: Some(cores as u32),
        // Every request's own query: the figures are a query's cost, as before queries were
        // shared (the scenarios repeat their paths, so requests would share many).
        share_queries: std::env::var("EM_BENCH_SHARE_QUERIES").is_ok_and(|v| v == "1"),
        ..ApiConfig::default()
    };
    let query_slots = QuerySlots::new(&api_config, ApiQueryMetrics::register(&registry)?);
    let state = ApiState {
        store,
        readiness: Arc::new(Readiness::default()),
        api: Arc::new(api_config),
        auth: Arc::new(Authenticator::from_config(&auth)?),
        http_metrics: HttpMetrics::register(&registry)?,
        db_pool_metrics: DbPoolMetrics::register(&registry)?,
        query_slots,
        registry,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(api::serve(listener, api::router(state), stop.clone()));
    let token = mint_token(
        &auth,
        &["event:read".into()],
        Duration::from_secs(3600),
        "bench",
    )?;

    // Hour windows spread over the filled span, so caches see more than one window.
    let span_hours = (n / per_hour).max(1) as i64;
    let windows: Vec<String> = (0..64)
        .map(|k| {
            let from = end - chrono::Duration::hours(1 + (k * 7919) % span_hours);
            format!("date={}", from.format("%Y-%m-%dT%H:%M:%SZ"))
        })
        .collect();
    let ids: Vec<uuid::Uuid> = connect(&url)
        .await?
        .query(
            "SELECT id FROM events TABLESAMPLE SYSTEM (0.1) LIMIT 512",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let scenarios: Vec<(&str, Vec<String>)> = vec![
        (
            "last hour (no filter)",
            vec![format!(
                "/api/events?date_to={}",
                end.format("%Y-%m-%dT%H:%M:%S%.6fZ")
            )],
        ),
        (
            "hour window",
            windows.iter().map(|w| format!("/api/events?{w}")).collect(),
        ),
        (
            "hour window + event_type",
            windows
                .iter()
                .map(|w| format!("/api/events?{w}&event_type=StateChangeEvent"))
                .collect(),
        ),
        (
            "hour window + entity_type",
            windows
                .iter()
                .map(|w| format!("/api/events?{w}&entity_type=EmployeeRequest"))
                .collect(),
        ),
        (
            "hour window + attribute_name",
            windows
                .iter()
                .map(|w| format!("/api/events?{w}&attribute_name=employee_id"))
                .collect(),
        ),
        (
            "hour window + attribute_name&new_value",
            windows
                .iter()
                .map(|w| format!("/api/events?{w}&attribute_name=status&new_value=APPROVED"))
                .collect(),
        ),
        // Not among the common filters: an attribute in 1 event of 1 000, and one captured
        // identifier value (not counted by value). Both read the whole window row by row (see
        // `TIME_FIRST_WINDOW_HOURS`), so their cost grows with the events per hour.
        (
            "hour window + rare attribute_name",
            windows
                .iter()
                .map(|w| format!("/api/events?{w}&attribute_name=rare_attr"))
                .collect(),
        ),
        (
            "hour window + employee_id&new_value",
            windows
                .iter()
                .enumerate()
                .map(|(k, w)| {
                    format!(
                        "/api/events?{w}&attribute_name=employee_id&new_value=emp-{}",
                        k * 157 % 10_000
                    )
                })
                .collect(),
        ),
        (
            "get by id",
            ids.iter().map(|id| format!("/api/events/{id}")).collect(),
        ),
    ];
    println!(
        "\n{n} events ({per_hour}/h), {concurrency} clients, {seconds}s per scenario, pool {pool_size}, \
         indexed attributes {indexed:?}, indexed values {indexed_values:?}"
    );
    println!(
        "{:<42} {:>9} {:>9} {:>9} {:>8} {:>12} {:>10}",
        "scenario", "p50 ms", "p99 ms", "req/s", "errors", "CPU µs/req", "of it PG"
    );
    let only = std::env::var("EM_BENCH_ONLY").unwrap_or_default();
    for (name, paths) in scenarios {
        if !name.contains(only.as_str()) {
            continue;
        }
        let paths = Arc::new(paths);
        let request = move |i: usize| (0, paths[i % paths.len()].clone());
        // Warm-up, then the measured run.
        load(
            addr,
            &token,
            concurrency,
            Duration::from_secs(1),
            request.clone(),
        )
        .await;
        let cpu_before = cpu_time();
        let o = load(
            addr,
            &token,
            concurrency,
            Duration::from_secs(seconds),
            request,
        )
        .await;
        let cpu_after = cpu_time();
        let latencies = o.latencies(None);
        let per_request = |d: Duration| d.as_secs_f64() * 1e6 / latencies.len().max(1) as f64;
        let app = per_request(cpu_after.0.saturating_sub(cpu_before.0));
        let pg = per_request(cpu_after.1.saturating_sub(cpu_before.1));
        println!(
            "{:<42} {:>9.2} {:>9.2} {:>9.0} {:>8} {:>12.0} {:>10.0}",
            name,
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            o.requests_per_s(),
            o.errors,
            app + pg,
            pg
        );
    }
    stop.cancel();
    drop(local);
    Ok(())
}

fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
