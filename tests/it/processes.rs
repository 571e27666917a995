//! Process-level fault tests on the real Apache Kafka (tests/it/support/kafka.rs): several `run`
//! processes forming one consumer group while a large stream arrives — rebalances 1 → 3 → 1,
//! `kill -9` three times, SIGTERM — and the broker itself crashed, stopped, grown and joined by
//! new topics. Every test compares the EventDB row by row with the stream's own model.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pipeline::{compare, esoz_rule, produce, producer, scripted_stream, stored_rows};
use crate::support::kafka::{kafka, unique, RealKafka};
use crate::support::{free_port, fresh_database, wait_for, TestDatabase};

const BIN: &str = env!("CARGO_BIN_EXE_event-manager");

/// Messages of the large stream: 6 partitions of 25 000 ESOZ messages (about 6 MiB each, more
/// than librdkafka's MockCluster keeps per partition).
const LARGE_STREAM: usize = 150_000;

/// A child process killed when dropped (also when a test fails).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&self, sig: i32) {
        // SAFETY: signalling a child process we own.
        unsafe {
            libc::kill(self.0.id() as i32, sig);
        }
    }

    /// Waits for exit up to `limit`; returns the time taken.
    fn wait_exit(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.0.try_wait() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `kill -9`.
    fn crash(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.0.wait();
    }

    /// SIGTERM, and the exit within the shutdown grace.
    fn terminate(mut self) -> Duration {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(35))
            .expect("run exits within the shutdown grace after SIGTERM")
    }
}

/// A topic of this test's own with its ESOZ rule, on the shared broker unless `broker` is given.
struct Stream {
    bootstrap: String,
    topic: String,
    group: String,
    rules: tempfile::TempDir,
}

impl Stream {
    async fn create(broker: &RealKafka, partitions: i32) -> Self {
        let topic = unique("esoz");
        let dlq = format!("{topic}.dlq");
        broker.create_topic(&topic, partitions, &[]).await;
        broker.create_topic(&dlq, 1, &[]).await;
        let rules = tempfile::tempdir().unwrap();
        std::fs::write(rules.path().join("esoz.toml"), esoz_rule(&topic, &dlq)).unwrap();
        Self {
            bootstrap: broker.bootstrap(),
            topic,
            group: unique("fault-group"),
            rules,
        }
    }

    /// A `run` process of this stream's group; `http` is its HTTP port when the test reads
    /// `/readyz`.
    fn run(&self, db: &TestDatabase, http: Option<u16>, extra: &[(&str, &str)]) -> Proc {
        run_process(
            self.rules.path(),
            &self.bootstrap,
            &self.group,
            &db.url,
            http,
            extra,
        )
    }
}

fn run_process(
    rules: &Path,
    bootstrap: &str,
    group: &str,
    database_url: &str,
    http: Option<u16>,
    extra: &[(&str, &str)],
) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .env("EM_PIPELINE__TOPICS_DIR", rules)
        .env("EM_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
        .env("EM_KAFKA__GROUP_ID", group)
        .env("EM_KAFKA__SESSION_TIMEOUT", "6s")
        .env("EM_PIPELINE__BATCH_SIZE", "500")
        .env("EM_PIPELINE__BATCH_LINGER", "20ms")
        .env("EM_PIPELINE__MAX_RETRY_BACKOFF", "1s")
        .env("EM_HTTP__BIND", format!("127.0.0.1:{}", http.unwrap_or(0)))
        .env("DATABASE_URL", database_url)
        .env("EM_LOG__LEVEL", "warn")
        .env("EM_AUTH__DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in extra {
        cmd.env(key, value);
    }
    Proc(cmd.spawn().expect("spawn run"))
}

/// Sends the stream round-robin over partitions, many messages in flight, in order per
/// partition.
async fn feed(bootstrap: &str, topic: &str, stream: &[crate::pipeline::Partition]) {
    let producer = producer(bootstrap);
    let longest = stream.iter().map(Vec::len).max().unwrap_or(0);
    let mut sends = Vec::new();
    for i in 0..longest {
        for (p, msgs) in stream.iter().enumerate() {
            if let Some((key, payload)) = msgs.get(i) {
                sends.push(produce(&producer, topic, p as i32, Some(key), payload));
            }
        }
        if sends.len() >= 5_000 {
            futures::future::join_all(sends.drain(..)).await;
        }
    }
    futures::future::join_all(sends).await;
}

/// Waits until `db` accounts for at least `n` messages and prints the step.
async fn reached(db: &TestDatabase, n: i64, step: &str, began: Instant) {
    wait_for(Duration::from_secs(600), || async {
        db.stored_offsets_total().await >= n
    })
    .await;
    println!(
        "  {:>6.1}s {step} (stored offsets {})",
        began.elapsed().as_secs_f64(),
        db.stored_offsets_total().await
    );
}

/// One process, then three (two join under load), three crashes (`kill -9`, each replaced),
/// then back to one (two leave on SIGTERM), then SIGTERM of the last: every change stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_crashes_and_sigterm_under_load_store_each_change_once() {
    let db = fresh_database().await;
    let s = Stream::create(kafka(), 6).await;
    let (stream, expected) = scripted_stream(LARGE_STREAM);
    let total: i64 = stream.iter().map(|p| p.len() as i64).sum();
    let began = Instant::now();
    let feeding = tokio::spawn({
        let (bootstrap, topic) = (s.bootstrap.clone(), s.topic.clone());
        async move { feed(&bootstrap, &topic, &stream).await }
    });

    let step = |percent: i64| total * percent / 100;
    let a = s.run(&db, None, &[]);
    reached(&db, step(5), "1 process; two more join", began).await;
    let b = s.run(&db, None, &[]);
    let c = s.run(&db, None, &[]);
    reached(&db, step(20), "3 processes; kill -9 #1", began).await;
    c.crash();
    let c = s.run(&db, None, &[]);
    reached(&db, step(35), "kill -9 #2", began).await;
    b.crash();
    let b = s.run(&db, None, &[]);
    reached(&db, step(50), "kill -9 #3", began).await;
    a.crash();
    let a = s.run(&db, None, &[]);
    reached(&db, step(65), "two leave on SIGTERM (3 → 1)", began).await;
    let (took_b, took_c) = (b.terminate(), c.terminate());
    println!("  SIGTERM exits took {took_b:?} and {took_c:?}");
    feeding.await.expect("the feed");
    reached(&db, total, "all stored; SIGTERM to the last", began).await;
    let took_a = a.terminate();
    println!("  SIGTERM exit took {took_a:?}");
    compare(
        "1 → 3 → 1 processes, kill -9 ×3, SIGTERM",
        total as usize,
        &expected,
        &stored_rows(&db).await,
    );
    assert_eq!(
        db.stored_offsets_total().await,
        total,
        "no offset beyond the stream"
    );
}

/// Whether `run`'s `/readyz` on `port` says ready (`None` while it does not answer).
async fn ready(port: u16) -> Option<bool> {
    let answer = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    Some(answer.status().is_success())
}

async fn await_ready(port: u16, want: bool, within: Duration) {
    wait_for(within, || async { ready(port).await == Some(want) }).await;
}

/// The broker is killed (`kill -9`) and restarted mid-stream, later stopped for 30 s (the
/// consumer reports not ready meanwhile, then resumes), and at last killed for good while `run`
/// gets SIGTERM: every change stored once, and `run` still exits within its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_crashed_and_stopped_mid_stream_loses_and_duplicates_nothing() {
    let db = fresh_database().await;
    let mut broker = tokio::task::block_in_place(RealKafka::start_private);
    let s = Stream::create(&broker, 6).await;
    let (stream, expected) = scripted_stream(60_000);
    let total: i64 = stream.iter().map(|p| p.len() as i64).sum();
    let began = Instant::now();
    let feeding = tokio::spawn({
        let (bootstrap, topic) = (s.bootstrap.clone(), s.topic.clone());
        async move { feed(&bootstrap, &topic, &stream).await }
    });
    let http = free_port();
    let run = s.run(&db, Some(http), &[]);
    await_ready(http, true, Duration::from_secs(120)).await;

    reached(&db, total * 15 / 100, "broker: kill -9, restart", began).await;
    tokio::task::block_in_place(|| {
        broker.kill();
        broker.restart();
    });
    println!(
        "  {:>6.1}s broker back on the same ports",
        began.elapsed().as_secs_f64()
    );

    reached(&db, total * 45 / 100, "broker: stopped for 30 s", began).await;
    tokio::task::block_in_place(|| broker.stop());
    let stopped = Instant::now();
    await_ready(http, false, Duration::from_secs(30)).await;
    println!(
        "  not ready {:.1}s after the broker stopped",
        stopped.elapsed().as_secs_f64()
    );
    let outage = Duration::from_secs(30);
    // The outage lasts 30 s: this wait is the fault itself, not a synchronisation.
    tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
    assert_eq!(
        ready(http).await,
        Some(false),
        "not ready while the broker is stopped"
    );
    let during = db.stored_offsets_total().await;
    tokio::task::block_in_place(|| broker.restart());
    await_ready(http, true, Duration::from_secs(120)).await;
    println!(
        "  {:>6.1}s broker back after {:.1}s; ready again (stored offsets {during} during the outage)",
        began.elapsed().as_secs_f64(),
        stopped.elapsed().as_secs_f64()
    );

    feeding.await.expect("the feed");
    reached(&db, total, "all stored", began).await;
    compare(
        "broker kill -9 + restart, broker stopped 30 s",
        total as usize,
        &expected,
        &stored_rows(&db).await,
    );

    // The broker gone for good: SIGTERM still ends `run` within the grace.
    tokio::task::block_in_place(|| broker.kill());
    let took = run.terminate();
    println!("  SIGTERM with the broker gone: exit took {took:?}");
}

/// On SIGTERM the consumer, the terminator and the HTTP server stop together within one
/// `pipeline.shutdown_grace`. Here none of them can stop by itself: the test holds an exclusive
/// lock on `events`, so the consumer's batch, a terminator run and an API request all wait on it.
/// Waited for one after another (grace for the consumer, grace for the terminator, then the
/// server) the exit would take over twice the grace; together it takes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_consumer_terminator_and_http_together_within_one_grace() {
    use tokio::io::AsyncWriteExt;

    const GRACE: Duration = Duration::from_secs(8);
    let db = fresh_database().await;
    let topics = tempfile::tempdir().unwrap();
    std::fs::write(
        topics.path().join("esoz.toml"),
        esoz_rule("event_manager_topic", "event_manager_topic.dlq"),
    )
    .unwrap();
    let broker = event_manager::broker::EmbeddedBroker::start(1).unwrap();
    broker.create_topic("event_manager_topic", 1).unwrap();
    broker.create_topic("event_manager_topic.dlq", 1).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let child = Command::new(BIN)
        .arg("run")
        .env("EM_PIPELINE__TOPICS_DIR", topics.path())
        .env(
            "EM_PIPELINE__SHUTDOWN_GRACE",
            format!("{}s", GRACE.as_secs()),
        )
        .env("EM_PIPELINE__BATCH_LINGER", "20ms")
        .env("EM_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap_servers())
        .env("EM_KAFKA__GROUP_ID", "grace-group")
        .env("EM_HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("EM_TERMINATOR__SCHEDULE", "* * * * * *")
        .env("EM_TERMINATOR__EVENT_MAX_TIME", "1s")
        .env("DATABASE_URL", &db.url)
        .env("EM_LOG__LEVEL", "warn")
        .env("EM_AUTH__DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn run");
    let mut run = Proc(child);

    // The consumer: a first status, whose event insert waits.
    let producer = producer(&broker.bootstrap_servers());
    let sample = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/esoz/status_change_sample.json"),
    )
    .unwrap();
    produce(&producer, "event_manager_topic", 0, Some("k"), &sample).await;
    // The server: a request in flight, whose query waits (polling until the server listens).
    let until = Instant::now() + Duration::from_secs(60);
    let mut request = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(stream) => break stream,
            Err(e) => assert!(Instant::now() < until, "the server does not listen: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    request
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    wait_for(Duration::from_secs(60), || async {
        let waiting: Vec<String> = db
            .client()
            .await
            .query(
                "SELECT query FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let any = |what: &str| waiting.iter().any(|q| q.contains(what));
        // The consumer's insert, the terminator's delete and the API's page query.
        any("INSERT INTO events") && any("DELETE FROM events") && any("LIMIT")
    })
    .await;

    run.signal(libc::SIGTERM);
    let took = run
        .wait_exit(GRACE * 4)
        .expect("run exits after SIGTERM although nothing could stop by itself");
    assert!(
        took < GRACE * 2,
        "stopped in {took:?}: the components were waited for one after another, not together \
         within one grace of {GRACE:?}"
    );
    drop(request);
    lock.rollback().await.unwrap();
}
