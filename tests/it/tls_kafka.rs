//! Kafka over TLS and SASL against the real broker (`scripts/real-kafka`): `event-manager run`
//! stores what is produced over each listener, and each misconfiguration fails clearly — one
//! log line naming the cause, `/readyz` false and naming it, nothing stored — and the process
//! stores everything once restarted with the right settings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::kafka::{kafka, unique};
use crate::support::{free_port, fresh_database, wait_for, TestDatabase};

const BIN: &str = env!("CARGO_BIN_EXE_event-manager");
const MESSAGES: usize = 20;

/// A topic with its rule and the messages produced to it (over PLAINTEXT, by the test).
struct Feed {
    topic: String,
    topics_dir: tempfile::TempDir,
}

async fn feed() -> Feed {
    let broker = kafka();
    let topic = unique("tls");
    let dlq = format!("{topic}.dlq");
    broker.create_topic(&topic, 1, &[]).await;
    broker.create_topic(&dlq, 1, &[]).await;
    let topics_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        topics_dir.path().join("tls.toml"),
        format!(
            "[[topic]]\nname = \"{topic}\"\nformat = \"esoz\"\ndead_letter_topic = \"{dlq}\"\npartitions = 1\n"
        ),
    )
    .unwrap();
    let producer: FutureProducer = broker.producer();
    for i in 0..MESSAGES {
        let payload = serde_json::json!({
            "event_type": "StatusChangeEvent",
            "entity_type": "Declaration",
            "entity_id": format!("tls-{i}"),
            "properties": { "status": { "new_value": "active" } },
            "event_time": "2026-01-01T00:00:00Z",
            "changed_by": "tls-test",
        })
        .to_string();
        producer
            .send(
                FutureRecord::<str, str>::to(&topic)
                    .key(&format!("tls-{i}"))
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    Feed { topic, topics_dir }
}

/// `event-manager run`, killed when dropped; its log goes to a file.
struct Run {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(feed: &Feed, db: &TestDatabase, kafka_env: &[(String, String)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .env("EM_PIPELINE__TOPICS_DIR", feed.topics_dir.path())
        .env("EM_KAFKA__GROUP_ID", format!("{}-group", feed.topic))
        .env("EM_KAFKA__SESSION_TIMEOUT", "6s")
        .env("EM_PIPELINE__BATCH_LINGER", "20ms")
        .env("EM_HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &db.url)
        .env("EM_LOG__LEVEL", "info")
        .env("EM_AUTH__DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (key, value) in kafka_env {
        cmd.env(key, value);
    }
    Run {
        child: cmd.spawn().expect("spawn run"),
        port,
        log,
        _dir: dir,
    }
}

impl Run {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn readyz(&self) -> Option<(u16, serde_json::Value)> {
        let response = reqwest::get(format!("http://127.0.0.1:{}/readyz", self.port))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }
}

async fn stored(db: &TestDatabase) -> (i64, i64) {
    let events: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    (events, db.stored_offsets_total().await)
}

/// Runs with `env` until every message is stored, then checks readiness; returns the log.
async fn stores_everything(feed: &Feed, db: &TestDatabase, env: &[(String, String)]) -> String {
    let run = run(feed, db, env);
    let log = all_stored(&run, db).await;
    assert!(!log.contains("kafka connection failed"), "{log}");
    log
}

/// Waits until every message is stored and `/readyz` answers 200; returns the log.
async fn all_stored(run: &Run, db: &TestDatabase) -> String {
    let all = (MESSAGES as i64, MESSAGES as i64);
    let deadline = Instant::now() + Duration::from_secs(90);
    while stored(db).await != all {
        assert!(
            Instant::now() < deadline,
            "not stored within 90 s: {:?}; log:\n{}",
            stored(db).await,
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for(Duration::from_secs(30), || async {
        run.readyz().await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    run.log()
}

/// Runs with `env` and expects `cause` in one log line and in `/readyz`, and nothing stored;
/// returns the still running process.
async fn fails_clearly(
    feed: &Feed,
    db: &TestDatabase,
    env: &[(String, String)],
    cause: &str,
) -> Run {
    let run = run(feed, db, env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some((status, body)) = run.readyz().await {
            if body["kafka_error"].is_string() {
                assert_eq!(status, 503, "{body}");
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not name a Kafka error within 60 s; log:\n{}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["ready"], false, "{body}");
    let named = body["kafka_error"].as_str().unwrap_or_default();
    assert!(
        named.contains(cause),
        "/readyz names `{named}`, not `{cause}`"
    );
    // librdkafka retries (and reports) every few hundred milliseconds at first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = run.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("kafka connection failed"))
        .collect();
    assert_eq!(lines.len(), 1, "one log line for the cause:\n{log}");
    assert!(lines[0].contains(cause), "{}", lines[0]);
    assert_eq!(stored(db).await, (0, 0), "nothing is stored");
    run
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A CA certificate (PEM) that signed nothing of the broker's.
fn other_ca(dir: &Path) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "some other CA");
    let cert = params.self_signed(&key).unwrap();
    let file = dir.join("other-ca.pem");
    std::fs::write(&file, cert.pem()).unwrap();
    file
}

/// A TCP relay from 127.0.0.2 (which the broker's certificate does not name) to `target`.
async fn relay_from_other_address(target: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_stores_what_is_produced_and_tls_to_it_fails_clearly() {
    let l = kafka().listeners().clone();
    let feed = feed().await;
    let db = fresh_database().await;
    fails_clearly(
        &feed,
        &db,
        &env(&[
            ("EM_KAFKA__BOOTSTRAP_SERVERS", &l.plaintext),
            ("EM_KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("EM_KAFKA__TLS__CA_FILE", path(&l.ca_file)),
        ]),
        "protocol mismatch: TLS to a listener without TLS",
    )
    .await;
    stores_everything(
        &feed,
        &db,
        &env(&[("EM_KAFKA__BOOTSTRAP_SERVERS", &l.plaintext)]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_listener_fails_clearly_and_ssl_then_stores_what_is_produced() {
    let l = kafka().listeners().clone();
    let feed = feed().await;
    let db = fresh_database().await;
    let plain_to_tls = "protocol mismatch: plain Kafka protocol to a TLS listener";
    fails_clearly(
        &feed,
        &db,
        &env(&[("EM_KAFKA__BOOTSTRAP_SERVERS", &l.ssl_server_auth)]),
        plain_to_tls,
    )
    .await;
    fails_clearly(
        &feed,
        &db,
        &env(&[("EM_KAFKA__BOOTSTRAP_SERVERS", &l.sasl_ssl)]),
        plain_to_tls,
    )
    .await;
    stores_everything(
        &feed,
        &db,
        &env(&[
            ("EM_KAFKA__BOOTSTRAP_SERVERS", &l.ssl_server_auth),
            ("EM_KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("EM_KAFKA__TLS__CA_FILE", path(&l.ca_file)),
        ]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_stores_what_is_produced_and_a_wrong_ca_or_host_fails_clearly() {
    let l = kafka().listeners().clone();
    let feed = feed().await;
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong_ca = other_ca(dir.path());
    fails_clearly(
        &feed,
        &db,
        &env(&[
            ("EM_KAFKA__BOOTSTRAP_SERVERS", &l.ssl_server_auth),
            ("EM_KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("EM_KAFKA__TLS__CA_FILE", path(&wrong_ca)),
        ]),
        "unknown CA: the broker's certificate is not signed by the CA in kafka.tls.ca_file",
    )
    .await;
    let other_host = relay_from_other_address(l.ssl_server_auth.clone()).await;
    fails_clearly(
        &feed,
        &db,
        &env(&[
            ("EM_KAFKA__BOOTSTRAP_SERVERS", &other_host),
            ("EM_KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("EM_KAFKA__TLS__CA_FILE", path(&l.ca_file)),
        ]),
        "hostname mismatch: the broker's certificate does not name `127.0.0.2`",
    )
    .await;
    stores_everything(
        &feed,
        &db,
        &env(&[
            ("EM_KAFKA__BOOTSTRAP_SERVERS", &l.ssl_server_auth),
            ("EM_KAFKA__SECURITY_PROTOCOL", "SSL"),
            ("EM_KAFKA__TLS__CA_FILE", path(&l.ca_file)),
        ]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_with_a_client_certificate_stores_what_is_produced_and_without_one_fails_clearly() {
    let l = kafka().listeners().clone();
    let feed = feed().await;
    let db = fresh_database().await;
    fails_clearly(
        &feed,
        &db,
        &env(&[
            ("EM_KAFKA__BOOTSTRAP_SERVERS", &l.ssl),
            ("EM_KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("EM_KAFKA__TLS__CA_FILE", path(&l.ca_file)),
        ]),
        "the broker requires a client certificate",
    )
    .await;
    stores_everything(
        &feed,
        &db,
        &env(&[
            ("EM_KAFKA__BOOTSTRAP_SERVERS", &l.ssl),
            ("EM_KAFKA__SECURITY_PROTOCOL", "ssl"),
            ("EM_KAFKA__TLS__CA_FILE", path(&l.ca_file)),
            ("EM_KAFKA__TLS__CERT_FILE", path(&l.client_cert)),
            ("EM_KAFKA__TLS__KEY_FILE", path(&l.client_key)),
        ]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_stores_what_is_produced_and_a_wrong_password_fails_clearly() {
    let l = kafka().listeners().clone();
    let feed = feed().await;
    let db = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "not-the-password\n").unwrap();
    let sasl = |password_file: &Path| {
        env(&[
            ("EM_KAFKA__BOOTSTRAP_SERVERS", &l.sasl_ssl),
            ("EM_KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("EM_KAFKA__SASL__MECHANISM", "SCRAM-SHA-512"),
            ("EM_KAFKA__SASL__USERNAME", &l.scram_user),
            ("EM_KAFKA__SASL__PASSWORD_FILE", path(password_file)),
            ("EM_KAFKA__TLS__CA_FILE", path(&l.ca_file)),
        ])
    };
    let failing = fails_clearly(
        &feed,
        &db,
        &sasl(&password_file),
        "authentication failed: the broker rejected the SASL SCRAM-SHA-512 credentials",
    )
    .await;
    // The secret is rotated in place (as the kubelet updates a mounted Secret): the running
    // process reads the file again and stores everything without a restart.
    std::fs::write(&password_file, format!("{}\n", l.scram_password)).unwrap();
    let log = all_stored(&failing, &db).await;
    assert!(
        log.contains("kafka.sasl.password_file changed"),
        "the new password was picked up:\n{log}"
    );
    // The password itself is never logged, neither the wrong one nor the right one.
    assert!(
        !log.contains("not-the-password") && !log.contains(&l.scram_password),
        "{log}"
    );
    drop(failing);

    // Started with the right password file, it stores everything at once.
    let feed = self::feed().await;
    let db = fresh_database().await;
    let log = stores_everything(&feed, &db, &sasl(&password_file)).await;
    assert!(!log.contains(&l.scram_password), "{log}");

    // The password given directly instead of as a file works the same.
    let feed = self::feed().await;
    let db = fresh_database().await;
    let mut direct = sasl(&password_file);
    direct.retain(|(k, _)| k != "EM_KAFKA__SASL__PASSWORD_FILE");
    direct.push(("EM_KAFKA__SASL__PASSWORD".into(), l.scram_password.clone()));
    let log = stores_everything(&feed, &db, &direct).await;
    assert!(!log.contains(&l.scram_password), "{log}");
}

#[test]
fn start_up_names_the_key_of_an_unreadable_file() {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .env("EM_KAFKA__SECURITY_PROTOCOL", "sasl_ssl")
        .env("EM_KAFKA__SASL__MECHANISM", "SCRAM-SHA-512")
        .env("EM_KAFKA__SASL__USERNAME", "u")
        .env("EM_KAFKA__SASL__PASSWORD_FILE", "/nonexistent/password")
        .env("EM_AUTH__DISABLED", "true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kafka.sasl.password_file") && stderr.contains("/nonexistent/password"),
        "{stderr}"
    );
}
