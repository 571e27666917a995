//! The real Apache Kafka of the tests: `scripts/real-kafka` (one KRaft node with PLAINTEXT, SSL,
//! SASL_SSL and SSL_SERVER_AUTH listeners), started once per test binary and shared, with topics and group ids of
//! their own per test so that tests stay parallel. Tests that crash, stop or freeze a broker start
//! a private one ([`RealKafka::start_private`]).
//!
//! A broker never outlives the test binary: its script runs in its own process group under a
//! dedicated thread with a parent-death signal (SIGTERM), and the script stops the JVM and removes
//! its folder on SIGTERM.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/real-kafka");

/// What the script printed before `ready`: the listeners and the credentials for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    /// `host:port` of the PLAINTEXT listener.
    pub plaintext: String,
    /// `host:port` of the SSL listener (clients present [`Self::client_cert`]).
    pub ssl: String,
    /// `host:port` of the SASL_SSL listener (SCRAM-SHA-512).
    pub sasl_ssl: String,
    /// `host:port` of an SSL listener that asks for no client certificate.
    pub ssl_server_auth: String,
    /// The CA that signed the broker's and the client's certificates (PEM).
    pub ca_file: PathBuf,
    /// A client certificate for the SSL listener (PEM).
    pub client_cert: PathBuf,
    /// Its key (PEM, PKCS#8, unencrypted).
    pub client_key: PathBuf,
    /// A SCRAM-SHA-512 user.
    pub scram_user: String,
    /// Its password.
    pub scram_password: String,
}

impl Listeners {
    fn parse(lines: &[String]) -> Result<Self, String> {
        let mut facts: HashMap<&str, Vec<&str>> = HashMap::new();
        for line in lines {
            let mut words = line.split_whitespace();
            if let Some(key) = words.next() {
                facts.insert(key, words.collect());
            }
        }
        let one = |key: &str| -> Result<String, String> {
            match facts.get(key).map(Vec::as_slice) {
                Some([value]) => Ok((*value).to_owned()),
                _ => Err(format!("no `{key} <value>` line in {lines:?}")),
            }
        };
        let (scram_user, scram_password) = match facts.get("SCRAM_USER").map(Vec::as_slice) {
            Some([user, password]) => ((*user).to_owned(), (*password).to_owned()),
            _ => {
                return Err(format!(
                    "no `SCRAM_USER <name> <password>` line in {lines:?}"
                ))
            }
        };
        Ok(Self {
            plaintext: one("PLAINTEXT")?,
            ssl: one("SSL")?,
            sasl_ssl: one("SASL_SSL")?,
            ssl_server_auth: one("SSL_SERVER_AUTH")?,
            ca_file: one("CA_FILE")?.into(),
            client_cert: one("CLIENT_CERT")?.into(),
            client_key: one("CLIENT_KEY")?.into(),
            scram_user,
            scram_password,
        })
    }
}

/// A running `scripts/real-kafka`.
#[derive(Debug)]
pub struct RealKafka {
    listeners: Listeners,
    /// The state folder of a private broker (kept across restarts), `None` for the shared one.
    dir: Option<tempfile::TempDir>,
    /// The script's pid, which is also its process group id; `None` while it is not running.
    pid: Option<i32>,
    keeper: Option<thread::JoinHandle<()>>,
    /// Every line the script printed before `ready`, in order (the lines of the last start).
    lines: Vec<String>,
}

static SHARED: OnceLock<RealKafka> = OnceLock::new();

/// The broker shared by the whole test binary, started on first use.
pub fn kafka() -> &'static RealKafka {
    SHARED.get_or_init(|| {
        RealKafka::launch(None).unwrap_or_else(|e| panic!("starting scripts/real-kafka: {e}"))
    })
}

/// A name of its own for a test's topic or consumer group: `prefix` and a unique suffix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

impl RealKafka {
    /// Starts a broker of its own (for tests that crash, stop or freeze it), with a state folder
    /// that survives [`Self::kill`] and [`Self::stop`] so that [`Self::restart`] brings the
    /// same broker back: same ports, data, certificates and users.
    pub fn start_private() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("real-kafka-private.")
            .tempdir()
            .expect("a folder for a private broker");
        let mut broker = Self::launch(Some(dir.path()))
            .unwrap_or_else(|e| panic!("starting a private scripts/real-kafka: {e}"));
        broker.dir = Some(dir);
        broker
    }

    fn launch(dir: Option<&Path>) -> Result<Self, String> {
        let mut cmd = Command::new(SCRIPT);
        if let Some(dir) = dir {
            cmd.arg("--dir").arg(dir);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The parent-death signal fires when the thread that forked the script ends: a dedicated
        // thread forks it and lives exactly as long as the script runs.
        let (started_tx, started_rx) = mpsc::channel::<Result<(i32, Vec<String>), String>>();
        let keeper = thread::Builder::new()
            .name("real-kafka".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        let _ = started_tx.send(Err(format!("cannot run {SCRIPT}: {e}")));
                        return;
                    }
                };
                let pid = child.id() as i32;
                let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
                let mut lines = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    match stdout.read_line(&mut line) {
                        Ok(0) | Err(_) => {
                            let status = child.wait();
                            let _ = started_tx.send(Err(format!(
                                "the script ended before `ready` ({status:?}); it printed {lines:?}"
                            )));
                            return;
                        }
                        Ok(_) if line.trim() == "ready" => break,
                        Ok(_) => lines.push(line.trim().to_owned()),
                    }
                }
                let _ = started_tx.send(Ok((pid, lines)));
                // Keep reading (the script prints nothing more) until it ends, then reap it.
                let _ = std::io::copy(&mut stdout, &mut std::io::sink());
                let _ = child.wait();
            })
            .map_err(|e| format!("spawning the keeper thread: {e}"))?;
        let (pid, lines) = started_rx
            .recv()
            .map_err(|_| "the keeper thread ended".to_owned())??;
        Ok(Self {
            listeners: Listeners::parse(&lines)?,
            dir: None,
            pid: Some(pid),
            keeper: Some(keeper),
            lines,
        })
    }

    /// The listeners and credentials.
    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    /// The lines the script printed before `ready`.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// `bootstrap.servers` of the PLAINTEXT listener.
    pub fn bootstrap(&self) -> String {
        self.listeners.plaintext.clone()
    }

    /// The pid of the script (also its process group id) while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    fn signal_group(&self, signal: i32) {
        if let Some(pid) = self.pid {
            // SAFETY: signalling the process group of a script this test started and has not
            // reaped yet (the keeper thread reaps it only after it exits).
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }

    fn reap(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        self.pid = None;
    }

    /// Crashes the broker: `kill -9` of the script and the JVM (its whole process group).
    pub fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        self.reap();
    }

    /// Stops the broker cleanly (SIGTERM; the script stops the JVM) and waits until it exited.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid {
            // SAFETY: as in `signal_group`, our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        self.reap();
    }

    /// Freezes the broker (SIGSTOP to its process group): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal_group(libc::SIGSTOP);
    }

    /// Resumes a frozen broker (SIGCONT).
    pub fn thaw(&self) {
        self.signal_group(libc::SIGCONT);
    }

    /// Starts a private broker again after [`Self::kill`] or [`Self::stop`]: the same ports, data,
    /// certificates and users.
    pub fn restart(&mut self) {
        assert!(
            self.pid.is_none(),
            "restart a broker that was killed or stopped"
        );
        let dir = self
            .dir
            .as_ref()
            .expect("only private brokers restart")
            .path();
        let again = Self::launch(Some(dir))
            .unwrap_or_else(|e| panic!("restarting scripts/real-kafka: {e}"));
        assert_eq!(
            again.listeners, self.listeners,
            "a restart keeps the listeners"
        );
        let mut again = again;
        self.pid = again.pid.take();
        self.keeper = again.keeper.take();
        self.lines = std::mem::take(&mut again.lines);
    }

    /// A client configuration for the PLAINTEXT listener.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// An idempotent producer (ordered, no duplicates per partition).
    pub fn producer(&self) -> FutureProducer {
        self.client_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "200000")
            .create()
            .expect("producer")
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.client_config().create().expect("admin client")
    }

    /// Creates a topic with `partitions` partitions and topic-level `config`; waits until it is
    /// created.
    pub async fn create_topic(&self, name: &str, partitions: i32, config: &[(&str, &str)]) {
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (key, value) in config {
            topic = topic.set(key, value);
        }
        let results = self
            .admin()
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create topics");
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("creating topic {topic}: {e}"));
        }
    }

    /// Deletes a partition's messages below `before` (the log start moves there), as retention
    /// would.
    pub async fn delete_records(&self, topic: &str, partition: i32, before: i64) {
        let mut offsets = rdkafka::TopicPartitionList::new();
        offsets
            .add_partition_offset(topic, partition, rdkafka::Offset::Offset(before))
            .expect("offset list");
        let result = self
            .admin()
            .delete_records(
                &offsets,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("delete records");
        for e in result.elements() {
            if let Err(err) = e.error() {
                panic!("deleting records of {topic}/{partition} below {before}: {err}");
            }
        }
    }

    /// Grows a topic to `total` partitions.
    pub async fn add_partitions(&self, name: &str, total: usize) {
        let results = self
            .admin()
            .create_partitions(
                [&NewPartitions::new(name, total)],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create partitions");
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("adding partitions to {topic}: {e}"));
        }
    }
}

impl Drop for RealKafka {
    fn drop(&mut self) {
        if self.pid.is_some() {
            self.thaw(); // a frozen broker cannot stop
            self.stop();
        }
    }
}
