//! The real binary against the private PostgreSQL: database failures name their cause without
//! secrets, and a debug-level run keeps patient data, topics, keys and tokens out of its logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, fresh_database, wait_for, TestDatabase};

const BIN: &str = env!("CARGO_BIN_EXE_event-manager");

/// A child process killed when dropped, its stdout and stderr in files.
struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(command: &mut Command) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        let child = command
            .env_remove("EM_CONFIG")
            .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
            .spawn()
            .expect("spawn event-manager");
        Self {
            child,
            out,
            err,
            _dir: dir,
        }
    }

    /// stdout and stderr so far.
    fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        format!("{out}{err}")
    }

    /// Waits for the exit code.
    fn exit_code(&mut self, limit: Duration) -> i32 {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < until,
                "still running after {limit:?}: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the output contains `text`.
    async fn wait_output(&self, text: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let output = self.output();
            if output.contains(text) {
                return output;
            }
            assert!(
                Instant::now() < until,
                "no {text:?} within {limit:?}: {output}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling a child process we own.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

/// A topics directory with the shipped SFS and FHIRcast rules.
fn topics_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
    for file in ["sfs.toml", "fhircast.toml"] {
        std::fs::copy(shipped.join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn command(args: &[&str], topics: &Path, database_url: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env("EM_PIPELINE__TOPICS_DIR", topics)
        .env("EM_AUTH__DISABLED", "true")
        .env("EM_HTTP__BIND", "127.0.0.1:0")
        .env("EM_LOG__FORMAT", "text")
        .env("DATABASE_URL", database_url);
    command
}

/// `url` with another user, password, port or database.
fn with(url: &str, change: impl FnOnce(&mut url::Url)) -> String {
    let mut url: url::Url = url.parse().unwrap();
    change(&mut url);
    url.to_string()
}

/// A login role whose password the server checks (the private server trusts everyone else):
/// its name, after an `hba` line asking it for a password is loaded.
async fn password_role(db: &TestDatabase, password: &str) -> String {
    let role = format!("pw_{}", uuid::Uuid::now_v7().simple());
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
             GRANT ALL ON DATABASE {} TO {role}",
            db.name
        ))
        .await
        .unwrap();
    let hba: String = admin.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
    let rules = std::fs::read_to_string(&hba).expect("read the private server's pg_hba.conf");
    std::fs::write(
        &hba,
        format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .expect("write the private server's pg_hba.conf");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let wrong = with(&db.url, |u| {
        u.set_username(&role).unwrap();
        u.set_password(Some("not-it")).unwrap();
    });
    wait_for(Duration::from_secs(30), || async {
        tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
            .await
            .is_err()
    })
    .await;
    role
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_failures_name_their_cause_without_secrets() {
    const PASSWORD: &str = "Pw-Marker-5e1f";
    let db = fresh_database().await;
    let topics = topics_dir();
    let role = password_role(&db, "the-right-one").await;

    // A database that does not exist: `run` stops at once (waiting cannot help).
    let missing = with(&db.url, |u| u.set_path("/no_such_db_4a7c"));
    let mut run = Proc::spawn(&mut command(&["run"], topics.path(), &missing));
    assert_ne!(run.exit_code(Duration::from_secs(60)), 0);
    let output = run.output();
    assert!(
        output.contains(r#"database "no_such_db_4a7c" does not exist"#),
        "{output}"
    );
    assert!(output.contains("3D000"), "{output}");

    // A wrong password: the server's words, not the password.
    let wrong = with(&db.url, |u| {
        u.set_username(&role).unwrap();
        u.set_password(Some(PASSWORD)).unwrap();
    });
    for args in [&["migrate"][..], &["run"], &["terminate", "--dry-run"]] {
        let mut process = Proc::spawn(&mut command(args, topics.path(), &wrong));
        assert_ne!(process.exit_code(Duration::from_secs(60)), 0, "{args:?}");
        let output = process.output();
        assert!(
            output.contains(&format!(
                r#"password authentication failed for user "{role}""#
            )),
            "{args:?}: {output}"
        );
        assert!(output.contains("28P01"), "{args:?}: {output}");
        assert!(!output.contains(PASSWORD), "{args:?}: {output}");
    }

    // Nothing listens: the connection error's own cause.
    let port = free_port();
    let unreachable = with(&db.url, |u| {
        u.set_port(Some(port)).unwrap();
        u.set_password(Some(PASSWORD)).unwrap();
    });
    let mut migrate = Proc::spawn(&mut command(&["migrate"], topics.path(), &unreachable));
    assert_ne!(migrate.exit_code(Duration::from_secs(60)), 0);
    let output = migrate.output();
    assert!(output.contains("Connection refused"), "{output}");
    assert!(!output.contains(PASSWORD), "{output}");
    // `run` waits for the database, saying why on every attempt.
    let run = Proc::spawn(&mut command(&["run"], topics.path(), &unreachable));
    let output = run.wait_output("retrying", Duration::from_secs(60)).await;
    assert!(output.contains("Connection refused"), "{output}");
    assert!(!output.contains(PASSWORD), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_logs_why_the_database_check_fails() {
    let db = fresh_database().await;
    let topics = topics_dir();
    let broker = event_manager::broker::EmbeddedBroker::start(1).unwrap();
    let rules = event_manager::config::load_topic_rules(topics.path()).unwrap();
    broker.create_rule_topics(&rules, None).unwrap();
    let port = free_port();
    let mut command = command(&["run"], topics.path(), &db.url);
    command
        .env("EM_HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("EM_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap_servers())
        .env("EM_KAFKA__GROUP_ID", "readiness-cause");
    let run = Proc::spawn(&mut command);
    run.wait_output("http server listening", Duration::from_secs(60))
        .await;
    let admin = db.client().await;
    let other = with(&db.url, |u| u.set_path("/postgres"));
    let (server, conn) = tokio_postgres::connect(&other, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    drop(admin);
    server
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
        .await
        .unwrap();
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let status = reqwest::get(&readyz).await.unwrap().status();
    assert_eq!(status, 503);
    let output = run
        .wait_output("the database check failed", Duration::from_secs(30))
        .await;
    assert!(
        output.contains(&format!(r#"database \"{}\" does not exist"#, db.name))
            || output.contains(&format!(r#"database "{}" does not exist"#, db.name)),
        "{output}"
    );
    run.signal(libc::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_level_run_logs_no_payload_topic_key_or_token() {
    const CLINIC_KEY: &str = "Clinic-Key-Marker-91c2";
    const HUB_TOPIC: &str = "Hub-Topic-Marker-3b7d";
    const HOSPITALIZATION: &str = "Hospitalization-Marker-e5a0";
    const BODY: &str = "Body-Marker-77f1";
    const PATIENT: &str = "Patient-Marker-0c4e";
    const FILTER: &str = "Filter-Marker-d2b9";
    const SECRET: &str = "hs256-secret-for-the-log-test-0123456789";
    let db = fresh_database().await;
    let topics = topics_dir();
    let broker = event_manager::broker::EmbeddedBroker::start(1).unwrap();
    let rules = event_manager::config::load_topic_rules(topics.path()).unwrap();
    broker.create_rule_topics(&rules, None).unwrap();
    let auth = event_manager::config::AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..Default::default()
    };
    let token = event_manager::api::auth::mint_token(
        &auth,
        &["event:read".into()],
        Duration::from_secs(600),
        "log-test",
    )
    .unwrap();
    let port = free_port();
    let mut command = command(&["run"], topics.path(), &db.url);
    command
        .env_remove("EM_AUTH__DISABLED")
        .env("EM_AUTH__HS256_SECRET", SECRET)
        .env("RUST_LOG", "debug")
        .env("EM_LOG__LEVEL", "debug")
        .env("EM_HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("EM_KAFKA__BOOTSTRAP_SERVERS", broker.bootstrap_servers())
        .env("EM_KAFKA__GROUP_ID", "log-safety")
        .env("EM_PIPELINE__BATCH_LINGER", "20ms")
        .env("EM_WEBHOOKS__SFS__CLINICS__CLINIC-1", CLINIC_KEY)
        .env(
            "EM_WEBHOOKS__FHIRCAST__SUBSCRIPTIONS__RADIOLOGY__HUB_TOPIC",
            HUB_TOPIC,
        );
    let mut run = Proc::spawn(&mut command);
    run.wait_output("http server listening", Duration::from_secs(60))
        .await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let sfs = serde_json::json!({
        "clinicApiKey": CLINIC_KEY,
        "eventType": "hospitalization.discharged",
        "object": { "id": BODY, "hospitalizationId": HOSPITALIZATION, "note": BODY }
    });
    let response = http
        .post(format!("{base}/webhooks/sfs"))
        .json(&sfs)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut fhircast = serde_json::json!({
        "timestamp": "2024-05-01T10:00:00Z",
        "id": BODY,
        "event": {
            "hub.topic": HUB_TOPIC,
            "hub.event": "Patient-open",
            "context": [{ "key": "patient", "resource": { "resourceType": "Patient", "id": PATIENT } }]
        }
    });
    for (event, at) in [
        ("Patient-open", "2024-05-01T10:00:00Z"),
        ("Patient-close", "2024-05-01T10:05:00Z"),
    ] {
        fhircast["event"]["hub.event"] = event.into();
        fhircast["timestamp"] = at.into();
        let response = http
            .post(format!("{base}/webhooks/fhircast"))
            .json(&fhircast)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let client = db.client().await;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: i64 = client
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0);
        // The discharge, and the close of the patient the open set.
        if stored == 2 && db.stored_offsets_total().await == 3 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{stored} events stored: {}",
            run.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for query in [
        format!("attribute_name=status&new_value={HOSPITALIZATION}"),
        format!("event_type={FILTER}"),
        format!("attribute_name=patient&new_value=Patient/{FILTER}"),
    ] {
        let response = http
            .get(format!(
                "{base}/api/events?date=2024-05-01T09:30:00Z&date_to=2024-05-01T10:30:00Z&{query}"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "{query}: {body}");
    }
    run.signal(libc::SIGTERM);
    assert_eq!(run.exit_code(Duration::from_secs(60)), 0);
    let output = run.output();
    assert!(
        output.contains("DEBUG"),
        "the run logged at debug level: {output}"
    );
    for marker in [
        CLINIC_KEY,
        HUB_TOPIC,
        HOSPITALIZATION,
        BODY,
        PATIENT,
        FILTER,
        SECRET,
        token.as_str(),
    ] {
        assert!(!output.contains(marker), "{marker} in the logs:\n{output}");
    }
}

/// `topic:` + the first 32 hex digits of HMAC-SHA256(key, topic), computed here independently.
fn hashed(key: &str, topic: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(topic.as_bytes());
    let hex: String = mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("topic:{hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_replaces_fhircast_topics_in_stored_entity_ids_once() {
    const KEY: &str = "topic-id-key-for-the-migration-test";
    const SECRET_TOPIC: &str = "Old-Topic-Marker-6d1e";
    const NAMED_TOPIC: &str = "https://hub.example/topics/7a9c";
    let db = fresh_database().await;
    let topics = topics_dir();
    let client = db.client().await;
    // Rows of an older version, as if they had been there when V9 ran (V9 records the rewrite
    // as done in a database without FHIRcast entities).
    client
        .batch_execute(&format!(
            "INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                                 source_topic, source_partition, source_offset, source_seq) VALUES \
               (gen_random_uuid(), 'ContextChangeEvent', 'FhircastSession', '{SECRET_TOPIC}/patient', \
                '{{}}', now(), 'fhircast.events', 0, 1, 0), \
               (gen_random_uuid(), 'ContextChangeEvent', 'FhircastSession', '{NAMED_TOPIC}/study', \
                '{{}}', now(), 'fhircast.events', 0, 2, 0), \
               (gen_random_uuid(), 'StatusChangeEvent', 'Hospitalization', 'kept/as-is', \
                '{{}}', now(), 'sfs.events', 0, 1, 0); \
             INSERT INTO entity_state (entity_type, entity_id, attribute, value, event_time) VALUES \
               ('FhircastSession', '{SECRET_TOPIC}/patient', 'patient', 'Patient/p1', now()), \
               ('FhircastSession', '{NAMED_TOPIC}/study', 'study', NULL, now()); \
             INSERT INTO entities (entity_type, entity_id) VALUES \
               ('FhircastSession', '{SECRET_TOPIC}/patient'), ('FhircastSession', '{NAMED_TOPIC}/study'); \
             DELETE FROM data_migrations WHERE name = 'fhircast_session_ids';"
        ))
        .await
        .unwrap();
    let migrate = || {
        let mut command = command(&["migrate"], topics.path(), &db.url);
        command.env("EM_WEBHOOKS__FHIRCAST__TOPIC_ID_KEY", KEY).env(
            "EM_WEBHOOKS__FHIRCAST__SUBSCRIPTIONS__RADIOLOGY__HUB_TOPIC",
            NAMED_TOPIC,
        );
        Proc::spawn(&mut command)
    };
    let mut first = migrate();
    assert_eq!(
        first.exit_code(Duration::from_secs(60)),
        0,
        "{}",
        first.output()
    );
    let output = first.output();
    assert!(
        output.contains("fhircast_session_ids (2 FHIRcast entity ids rewritten)"),
        "{output}"
    );
    assert!(
        !output.contains(SECRET_TOPIC) && !output.contains(KEY),
        "{output}"
    );

    let hidden = format!("{}/patient", hashed(KEY, SECRET_TOPIC));
    let named = "subscription:radiology/study".to_owned();
    let ids = |table: &'static str| {
        let client = &client;
        async move {
            let mut ids: Vec<String> = client
                .query(&format!("SELECT entity_id FROM {table}"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            ids.sort();
            ids
        }
    };
    let mut expected = vec![hidden.clone(), named.clone()];
    expected.sort();
    assert_eq!(ids("entity_state").await, expected);
    assert_eq!(ids("entities").await, expected);
    let mut with_other = vec![hidden, named, "kept/as-is".to_owned()];
    with_other.sort();
    assert_eq!(ids("events").await, with_other);

    // Once only: a second run changes nothing, even with another key.
    let mut second = {
        let mut command = command(&["migrate"], topics.path(), &db.url);
        command.env(
            "EM_WEBHOOKS__FHIRCAST__TOPIC_ID_KEY",
            "another-key-0123456789",
        );
        Proc::spawn(&mut command)
    };
    assert_eq!(
        second.exit_code(Duration::from_secs(60)),
        0,
        "{}",
        second.output()
    );
    assert!(
        second.output().contains("up to date"),
        "{}",
        second.output()
    );
    assert_eq!(ids("events").await, with_other);
}
