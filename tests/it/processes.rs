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
