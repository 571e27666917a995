//! Process-level fault tests: a `dev-broker` process and several `run` processes forming a real
//! consumer group; crashes (`kill -9`), rebalances and shutdown with the broker gone.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pipeline::{produce, scripted_stream, stored_rows};
use crate::support::{fresh_database, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_event-manager");

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
}

fn topics_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("esoz.toml"),
        "[[topic]]\nname = \"event_manager_topic\"\nformat = \"esoz\"\ndead_letter_topic = \"event_manager_topic.dlq\"\ncapture = [\"employee_id\"]\npartitions = 6\n",
    )
    .unwrap();
    dir
}

fn dev_broker(topics: &Path) -> (Proc, String) {
    let file = topics.join("bootstrap.txt");
    let child = Command::new(BIN)
        .args(["dev-broker", "--bootstrap-file"])
        .arg(&file)
        .env("EM_PIPELINE__TOPICS_DIR", topics)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dev-broker");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            return (proc, text.trim().to_owned());
        }
        assert!(Instant::now() < deadline, "dev-broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_process(topics: &Path, bootstrap: &str, database_url: &str) -> Proc {
    let child = Command::new(BIN)
        .arg("run")
        .env("EM_PIPELINE__TOPICS_DIR", topics)
        .env("EM_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
        .env("EM_KAFKA__GROUP_ID", "fault-group")
        .env("EM_KAFKA__SESSION_TIMEOUT", "6s")
        .env("EM_PIPELINE__BATCH_SIZE", "200")
        .env("EM_PIPELINE__BATCH_LINGER", "20ms")
        .env("EM_HTTP__BIND", "127.0.0.1:0")
        .env("DATABASE_URL", database_url)
        .env("EM_LOG__LEVEL", "warn")
        .env("EM_AUTH__DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn run");
    Proc(child)
}

fn producer(bootstrap: &str) -> rdkafka::producer::FutureProducer {
    rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_with_a_crash_and_a_graceful_stop_store_each_change_once() {
    let db = fresh_database().await;
    let topics = topics_dir();
    let (_broker, bootstrap) = dev_broker(topics.path());
    let (stream, expected) = scripted_stream(6_000);
    let total: i64 = stream.iter().map(|p| p.len() as i64).sum();

    let mut a = run_process(topics.path(), &bootstrap, &db.url);
    let b = run_process(topics.path(), &bootstrap, &db.url);
    let c = run_process(topics.path(), &bootstrap, &db.url);

    // Produce while the group forms, crashes and rebalances.
    let producer = producer(&bootstrap);
    let feed = async {
        let longest = stream.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            for (p, msgs) in stream.iter().enumerate() {
                if let Some((key, payload)) = msgs.get(i) {
                    produce(&producer, p as i32, Some(key), payload).await;
                }
            }
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let faults = async {
        wait_for(Duration::from_secs(60), || async {
            db.stored_offsets_total().await > 300
        })
        .await;
        drop(c); // kill -9 mid-stream
        tokio::time::sleep(Duration::from_secs(2)).await;
        b.signal(libc::SIGTERM); // a graceful leave, forcing another rebalance
        let mut b = b;
        assert!(
            b.wait_exit(Duration::from_secs(35)).is_some(),
            "SIGTERM stops within the grace period"
        );
    };
    tokio::join!(feed, faults);

    wait_for(Duration::from_secs(180), || async {
        db.stored_offsets_total().await == total
    })
    .await;
    a.signal(libc::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(35)).is_some());
    assert_eq!(stored_rows(&db).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_gone_exits_within_the_grace_period() {
    let db = fresh_database().await;
    let topics = topics_dir();
    let (broker, bootstrap) = dev_broker(topics.path());
    let (stream, _) = scripted_stream(200);
    let producer = producer(&bootstrap);
    for (p, msgs) in stream.iter().enumerate() {
        for (key, payload) in msgs {
            produce(&producer, p as i32, Some(key), payload).await;
        }
    }
    let mut run = run_process(topics.path(), &bootstrap, &db.url);
    wait_for(Duration::from_secs(60), || async {
        db.stored_offsets_total().await == 200
    })
    .await;
    drop(producer);
    drop(broker); // the broker disappears
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.signal(libc::SIGTERM);
    let took = run.wait_exit(Duration::from_secs(35));
    assert!(
        took.is_some(),
        "run must exit within 30 s of SIGTERM even without a broker"
    );
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
    let topics = topics_dir();
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
    produce(&producer, 0, Some("k"), &sample).await;
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
