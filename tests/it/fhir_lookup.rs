//! FHIR look-up of missing statuses, end to end: DK eHealth status context events without a
//! status through the embedded broker, their status read from a local FHIR server, into
//! PostgreSQL; failed look-ups become dead letters with their reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use event_manager::broker::EmbeddedBroker;
use event_manager::config::{load_topic_rules, Config, Secret};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::pipeline::start;
use crate::support::{fresh_database, wait_for};

const TOPIC: &str = "ehealth-careplan.status";
const DLQ: &str = "ehealth-dk.status.dlq";
const PREFIX: &str = "https://ehealth.example/fhir";
const TOKEN: &str = "t0ken-for-tests";

type Hits = Arc<Mutex<HashMap<String, usize>>>;

/// A FHIR server: `found-*` → status active, `missing` → 404, `slow` → answers too late.
/// Every read needs the bearer token.
async fn fhir_server() -> (String, Hits) {
    async fn read(
        State(hits): State<Hits>,
        Path((id, version)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        *hits.lock().unwrap().entry(id.clone()).or_default() += 1;
        let authorized = headers
            .get("authorization")
            .is_some_and(|v| v == format!("Bearer {TOKEN}").as_str());
        if !authorized {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        assert_eq!(headers["accept"], "application/fhir+json");
        match id.as_str() {
            "missing" => StatusCode::NOT_FOUND.into_response(),
            "slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                axum::Json(json!({"resourceType": "CarePlan", "status": "active"})).into_response()
            }
            _ => axum::Json(json!({
                "resourceType": "CarePlan",
                "id": id,
                "meta": { "versionId": version },
                "status": if version == "3" { "completed" } else { "active" },
            }))
            .into_response(),
        }
    }
    let hits: Hits = Arc::default();
    let app = axum::Router::new()
        .route("/fhir/CarePlan/{id}/_history/{version}", get(read))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

fn context_event(id: &str, version: u32, event_type: &str) -> Vec<u8> {
    json!({
        "messageType": "EHealthContextEvent",
        "messageVersion": "1.0",
        "eventType": event_type,
        "resourceReference": format!("{PREFIX}/CarePlan/{id}"),
        "resourceVersion": version.to_string(),
        "context": "status",
    })
    .to_string()
    .into_bytes()
}

struct Setup {
    broker: EmbeddedBroker,
    topics: tempfile::TempDir,
}

fn setup() -> Setup {
    let broker = EmbeddedBroker::start(1).expect("broker");
    let topics = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topics/ehealth-dk.toml");
    std::fs::copy(shipped, topics.path().join("ehealth-dk.toml")).unwrap();
    broker
        .create_rule_topics(&load_topic_rules(topics.path()).unwrap(), Some(1))
        .unwrap();
    broker.create_topic(TOPIC, 1).unwrap();
    Setup { broker, topics }
}

impl Setup {
    fn config(&self, database_url: &str, fhir_base: Option<&str>) -> Config {
        let mut config = Config::default();
        config.kafka.bootstrap_servers = self.broker.bootstrap_servers();
        config.kafka.group_id = "lookup-test".into();
        config.kafka.session_timeout = Duration::from_secs(6);
        config.database.url = database_url.parse().unwrap();
        config.pipeline.topics_dir = self.topics.path().to_owned();
        config.pipeline.batch_linger = Duration::from_millis(20);
        config.pipeline.max_retry_backoff = Duration::from_millis(500);
        if let Some(base) = fhir_base {
            config.fhir.servers.insert(PREFIX.into(), base.into());
            config.fhir.bearer_token = Some(Secret::new(TOKEN));
            config.fhir.timeout = Duration::from_millis(300);
            config.fhir.retry_backoff = Duration::from_millis(20);
            config.fhir.max_attempts = 3;
        }
        config
    }

    async fn produce(&self, messages: &[Vec<u8>]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap_servers())
            .create()
            .unwrap();
        for payload in messages {
            producer
                .send(
                    FutureRecord::<str, [u8]>::to(TOPIC).payload(payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    }

    /// Dead letters as (reason, detail).
    fn dead_letters(&self, expected: usize) -> Vec<(String, String)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap_servers())
            .set("group.id", "dlq-reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[DLQ]).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while out.len() < expected && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|h| h.key == name))
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                out.push((header("em-dlq-reason"), header("em-dlq-detail")));
            }
        }
        out.sort();
        out
    }
}

fn metric(metrics: &str, line_start: &str) -> Option<String> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .map(|l| l[line_start.len()..].trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_statuses_are_looked_up_and_failures_are_dead_letters() {
    let s = setup();
    let (base, hits) = fhir_server().await;
    let db = fresh_database().await;
    s.produce(&[
        context_event("found-1", 2, "updated"),
        context_event("missing", 2, "updated"),
        context_event("slow", 2, "updated"),
        context_event("found-1", 3, "updated"),
    ])
    .await;
    let running = start(s.config(&db.url, Some(&base))).await;
    let client = db.client().await;
    wait_for(Duration::from_secs(60), || async {
        db.stored_offsets_total().await == 4
    })
    .await;

    let rows = client
        .query(
            "SELECT entity_type, entity_id, properties FROM events ORDER BY source_offset",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, Value)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let reference = format!("{PREFIX}/CarePlan/found-1");
    assert_eq!(
        got,
        vec![
            (
                "CarePlan".to_owned(),
                reference.clone(),
                json!({ "status": { "new_value": "active", "old_value": null } }),
            ),
            (
                "CarePlan".to_owned(),
                reference,
                json!({ "status": { "new_value": "completed", "old_value": "active" } }),
            ),
        ]
    );
    let letters = s.dead_letters(2);
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].0, "lookup_not_found");
    assert_eq!(letters[1].0, "lookup_timeout");
    for (_, detail) in &letters {
        assert!(
            !detail.contains("ehealth.example") && !detail.contains(TOKEN),
            "{detail}"
        );
    }
    {
        let hits = hits.lock().unwrap();
        assert_eq!(hits["missing"], 1, "a 404 is not retried");
        assert_eq!(hits["slow"], 3, "a timeout is retried up to max_attempts");
        assert_eq!(hits["found-1"], 2);
    }
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&running.app.registry.gather())
        .unwrap();
    for (result, n) in [("found", "2"), ("not_found", "1"), ("timeout", "1")] {
        assert_eq!(
            metric(
                &text,
                &format!("event_manager_status_lookups_total{{result=\"{result}\"}}")
            )
            .as_deref(),
            Some(n),
            "{result}"
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fhir_server_no_status_is_invented() {
    let s = setup();
    let db = fresh_database().await;
    s.produce(&[context_event("found-1", 2, "updated")]).await;
    let running = start(s.config(&db.url, None)).await;
    let client = db.client().await;
    wait_for(Duration::from_secs(60), || async {
        db.stored_offsets_total().await == 1
    })
    .await;
    let events: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&running.app.registry.gather())
        .unwrap();
    assert_eq!(
        metric(
            &text,
            "event_manager_status_lookups_total{result=\"not_configured\"}"
        )
        .as_deref(),
        Some("1")
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_the_token_is_a_failed_lookup() {
    let s = setup();
    let (base, hits) = fhir_server().await;
    let db = fresh_database().await;
    s.produce(&[context_event("found-2", 2, "updated")]).await;
    let mut config = s.config(&db.url, Some(&base));
    config.fhir.bearer_token = Some(Secret::new("wrong-token"));
    let running = start(config).await;
    wait_for(Duration::from_secs(60), || async {
        db.stored_offsets_total().await == 1
    })
    .await;
    let letters = s.dead_letters(1);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, "lookup_failed");
    assert!(letters[0].1.contains("401"), "{}", letters[0].1);
    assert!(!letters[0].1.contains("wrong-token"));
    assert_eq!(hits.lock().unwrap()["found-2"], 3);
    running.stop().await;
}
