//! The OpenAPI document against the running application, by schemathesis (PyPI, pinned in
//! `tests/schemathesis/requirements.txt`): the whole `run` assembly (pipeline, API, webhook
//! bridges) on the embedded broker and a database of its own with a few events, fuzzed with all
//! of schemathesis' checks. Schema-valid requests must be accepted, schema-invalid ones
//! rejected, and every response must match the document. The rules between query parameters,
//! which the document can only state in prose, are taught to the generator by
//! `tests/schemathesis/hooks.py`.
//!
//! schemathesis is installed once into a virtual environment under the target directory (named
//! by a digest of the requirements, so later runs are offline) from PyPI. Not being able to
//! install or run it fails the test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use event_manager::app::App;
use event_manager::broker::EmbeddedBroker;
use event_manager::config::{load_topic_rules, Config, Secret};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::api::{insert, row};
use crate::support::{fresh_database, wait_for};

const SECRET: &str = "schemathesis-test-secret-0123456789abcdef";
/// Examples per operation and phase: enough to cover every rule, short enough for CI.
const MAX_EXAMPLES: &str = "40";
/// A fixed seed, so that a failure is reproducible; `EM_SCHEMATHESIS_SEED` explores others.
const DEFAULT_SEED: &str = "20240501";

fn manifest_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn run_to_completion(command: &mut std::process::Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `st` executable of the pinned schemathesis, installed on first use.
fn schemathesis() -> PathBuf {
    let requirements = manifest_path("tests/schemathesis/requirements.txt");
    let pinned = std::fs::read(&requirements).expect("read tests/schemathesis/requirements.txt");
    let digest: String = Sha256::digest(&pinned)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{digest}"));
    let st = venv.join("bin").join("st");
    let complete = venv.join(".complete");
    // A virtual environment is not relocatable (its scripts name its path): it is built in
    // place, and an unfinished one (no marker) or one built elsewhere (a moved target
    // directory; the marker holds the path it was built at) is built again.
    let built_here = venv.to_string_lossy().into_owned();
    if std::fs::read_to_string(&complete).is_ok_and(|at| at == built_here) {
        return st;
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).expect("remove an unfinished schemathesis environment");
    }
    let python = std::env::var("EM_PYTHON").unwrap_or_else(|_| "python3".into());
    run_to_completion(
        std::process::Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv),
        &format!("`{python} -m venv` (Debian/Ubuntu: apt-get install python3-venv)"),
    );
    run_to_completion(
        std::process::Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "--requirement",
            ])
            .arg(&requirements),
        "installing schemathesis from PyPI",
    );
    std::fs::write(&complete, &built_here).expect("mark the schemathesis environment complete");
    st
}

/// The application as `run` assembles it, with both webhook bridges configured.
struct Running {
    base: String,
    token: String,
    config: Config,
    _broker: EmbeddedBroker,
    _topics: tempfile::TempDir,
    stop: CancellationToken,
    app: tokio::task::JoinHandle<()>,
}

async fn start() -> Running {
    let broker = EmbeddedBroker::start(1).expect("broker");
    let topics = tempfile::tempdir().unwrap();
    for file in ["esoz.toml", "sfs.toml", "fhircast.toml"] {
        std::fs::copy(manifest_path("topics").join(file), topics.path().join(file)).unwrap();
    }
    broker
        .create_rule_topics(&load_topic_rules(topics.path()).unwrap(), Some(1))
        .unwrap();
    let db = fresh_database().await;
    let now = chrono::Utc::now();
    insert(
        &db,
        &[
            row(
                "EmployeeRequest",
                json!({"status": {"new_value": "APPROVED", "old_value": "NEW"}}),
                now - chrono::Duration::minutes(20),
            ),
            row(
                "Declaration",
                json!({"status": {"new_value": "ACTIVE", "old_value": null}}),
                now - chrono::Duration::minutes(10),
            ),
        ],
    )
    .await;

    let mut config = Config::default();
    config.database.url = db.url.parse().unwrap();
    config.kafka.bootstrap_servers = broker.bootstrap_servers();
    config.kafka.group_id = "schemathesis".into();
    config.pipeline.topics_dir = topics.path().to_owned();
    config.terminator.enabled = false;
    config.auth.hs256_secret = Some(SECRET.into());
    config
        .webhooks
        .sfs
        .clinics
        .insert("clinic-1".into(), Secret::new("clinic-key-1"));
    config.webhooks.fhircast.subscriptions =
        serde_json::from_value(json!({"session": {"hub_topic": "topic-of-the-session"}})).unwrap();
    let token = event_manager::api::auth::mint_token(
        &config.auth,
        &["event:read".into()],
        Duration::from_secs(3600),
        "schemathesis",
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let app = App::build(config.clone()).expect("app");
    let app = tokio::spawn({
        let stop = stop.clone();
        async move { app.run(listener, stop).await.expect("the app runs") }
    });
    let http = reqwest::Client::new();
    wait_for(Duration::from_secs(60), || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    Running {
        base,
        token,
        config,
        _broker: broker,
        _topics: topics,
        stop,
        app,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_all_checks() {
    let st = tokio::task::spawn_blocking(schemathesis).await.unwrap();
    let running = start().await;
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("report.json");
    let seed = std::env::var("EM_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let child = tokio::process::Command::new(&st)
        .arg("run")
        .arg(format!("{}/openapi.json", running.base))
        .args([
            "--checks",
            "all",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            &seed,
        ])
        .args([
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .args(["--report", "json", "--report-json-path"])
        .arg(&report)
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", running.token))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", manifest_path("tests/schemathesis"))
        .env(
            "EM_SCHEMATHESIS_PERIOD_HOURS",
            running.config.api.events_list_max_period_hours.to_string(),
        )
        .current_dir(work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start schemathesis");
    let output = tokio::time::timeout(Duration::from_secs(900), child.wait_with_output())
        .await
        .expect("schemathesis finishes within 15 minutes")
        .expect("schemathesis runs");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(&report).unwrap_or_else(|e| panic!("no schemathesis report ({e}):\n{log}")),
    )
    .unwrap();
    running.stop.cancel();
    running.app.await.unwrap();

    assert!(
        output.status.success(),
        "schemathesis found problems:\n{log}"
    );
    assert_eq!(report["exit_code"], 0, "{log}");
    assert_eq!(report["complete"], true, "{log}");
    assert_eq!(report["failures"], json!([]), "{log}");
    assert_eq!(report["errors"], json!([]), "{log}");
    let operations = &report["operations"];
    assert_eq!(operations["skipped"], 0, "{log}");
    assert_eq!(operations["errored"], 0, "{log}");
    assert_eq!(operations["tested"], operations["selected"], "{log}");
    assert!(operations["tested"].as_u64() >= Some(5), "{log}");
    for phase in ["coverage", "fuzzing", "stateful"] {
        assert_eq!(
            report["phases"][phase]["status"], "success",
            "{phase}: {log}"
        );
    }
}
