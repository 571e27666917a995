//! The webhook bridges over real HTTP: SFS events and FHIRcast notifications produced into the
//! embedded broker, read back by the real pipeline into PostgreSQL; every refused request
//! produces nothing.

use std::time::Duration;

use event_manager::app::App;
use event_manager::broker::EmbeddedBroker;
use event_manager::config::{load_topic_rules, Config, Secret};
use hmac::{Hmac, KeyInit, Mac};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::pipeline::start;
use crate::support::{fresh_database, wait_for};

const SFS_TOPIC: &str = "sfs.events";
const FHIRCAST_TOPIC: &str = "fhircast.events";
const CLINIC_KEY: &str = "key-of-clinic-1";
const SIGNED_TOPIC: &str = "Session-Signed-7f3a";
const HUB_SECRET: &str = "hub-secret";

/// A broker with the SFS and FHIRcast topics and a topics directory with their shipped rules.
struct Bridge {
    broker: EmbeddedBroker,
    topics: tempfile::TempDir,
}

fn bridge() -> Bridge {
    let broker = EmbeddedBroker::start(1).expect("broker");
    let topics = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
    for file in ["sfs.toml", "fhircast.toml"] {
        std::fs::copy(shipped.join(file), topics.path().join(file)).unwrap();
    }
    let rules = load_topic_rules(topics.path()).unwrap();
    broker.create_rule_topics(&rules, None).unwrap();
    Bridge { broker, topics }
}

impl Bridge {
    fn config(&self, database_url: Option<&str>) -> Config {
        let mut config = Config::default();
        config.kafka.bootstrap_servers = self.broker.bootstrap_servers();
        config.kafka.group_id = "webhook-test".into();
        config.kafka.session_timeout = Duration::from_secs(6);
        if let Some(url) = database_url {
            config.database.url = url.parse().unwrap();
        }
        config.pipeline.topics_dir = self.topics.path().to_owned();
        config.pipeline.batch_linger = Duration::from_millis(20);
        config.pipeline.max_retry_backoff = Duration::from_millis(500);
        config.webhooks.produce_timeout = Duration::from_secs(2);
        config.webhooks.retry_after = Duration::from_secs(2);
        config.webhooks.max_body_bytes = 4096;
        config
            .webhooks
            .sfs
            .clinics
            .insert("clinic-1".into(), Secret::new(CLINIC_KEY));
        config
            .webhooks
            .sfs
            .clinics
            .insert("clinic-2".into(), Secret::new("key-of-clinic-2"));
        let subscriptions: Value = json!({
            "signed": { "hub_topic": SIGNED_TOPIC, "secret": HUB_SECRET },
            "open-a": { "hub_topic": "session-a" },
            "open-b": { "hub_topic": "session-b" },
        });
        config.webhooks.fhircast.subscriptions = serde_json::from_value(subscriptions).unwrap();
        config
    }

    /// Messages on all partitions of `topic`.
    fn produced(&self, topic: &str) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap_servers())
            .create()
            .unwrap();
        (0..3)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap();
                high - low
            })
            .sum()
    }

    /// Every message on `topic` as (key, payload).
    fn read_all(&self, topic: &str, expected: usize) -> Vec<(String, Value)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap_servers())
            .set("group.id", "webhook-test-reader")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while out.len() < expected && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                out.push((key, serde_json::from_slice(m.payload().unwrap()).unwrap()));
            }
        }
        out
    }
}

/// Serves the app's router on a free port; returns its base URL.
async fn serve(app: &App) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(event_manager::api::serve(
        listener,
        app.router(),
        stop.clone(),
    ));
    (base, stop)
}

fn discharged(key: &str, hospitalization: &str) -> Value {
    json!({
        "clinicApiKey": key,
        "eventType": "hospitalization.discharged",
        "object": { "id": "sfs-h-9", "hospitalizationId": hospitalization }
    })
}

async fn post_json(url: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sfs_event_is_acknowledged_after_the_broker_and_stored_without_its_key() {
    let b = bridge();
    let db = fresh_database().await;
    let running = start(b.config(Some(&db.url))).await;
    let (base, stop) = serve(&running.app).await;

    let response = post_json(
        &format!("{base}/webhooks/sfs"),
        &discharged(CLINIC_KEY, "emr-h-1"),
    )
    .await;
    assert_eq!(response.status(), 200);
    // Acknowledged means already on the topic.
    assert_eq!(b.produced(SFS_TOPIC), 1);
    let produced = b.read_all(SFS_TOPIC, 1);
    assert_eq!(produced.len(), 1);
    assert_eq!(produced[0].0, "emr-h-1", "keyed by the hospitalization");
    assert_eq!(
        produced[0].1,
        json!({
            "clinicId": "clinic-1",
            "eventType": "hospitalization.discharged",
            "object": { "id": "sfs-h-9", "hospitalizationId": "emr-h-1" }
        }),
        "the API key is replaced by the clinic id"
    );

    let client = db.client().await;
    wait_for(Duration::from_secs(30), || async {
        client
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    let row = client
        .query_one(
            "SELECT event_type, entity_type, entity_id, properties, source_topic FROM events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "StatusChangeEvent");
    assert_eq!(row.get::<_, String>(1), "Hospitalization");
    assert_eq!(row.get::<_, String>(2), "emr-h-1");
    assert_eq!(
        row.get::<_, Value>(3),
        json!({
            "status": { "new_value": "discharged", "old_value": null },
            "clinicId": { "new_value": "clinic-1" }
        })
    );
    assert_eq!(row.get::<_, String>(4), SFS_TOPIC);
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("event_manager_webhook_requests_total{bridge=\"sfs\",result=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(CLINIC_KEY));
    stop.cancel();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sfs_requests_name_the_problem_and_produce_nothing() {
    let b = bridge();
    let app = App::build(b.config(None)).unwrap();
    let (base, stop) = serve(&app).await;
    let url = format!("{base}/webhooks/sfs");
    let http = reqwest::Client::new();
    let raw = |body: &'static str, content_type: &'static str| {
        http.post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let cases = [
        (raw("{not json", "application/json").await.unwrap(), 400, "invalid_json", "not valid JSON"),
        (raw("[1]", "application/json").await.unwrap(), 400, "invalid_event", "a JSON object"),
        (
            post_json(&url, &json!({"eventType": "x", "object": {}})).await,
            400,
            "invalid_event",
            "`clinicApiKey` is missing",
        ),
        (
            post_json(&url, &json!({"clinicApiKey": CLINIC_KEY, "object": {}})).await,
            400,
            "invalid_event",
            "`eventType` is missing",
        ),
        (
            post_json(&url, &json!({"clinicApiKey": CLINIC_KEY, "eventType": 7, "object": {}})).await,
            400,
            "invalid_event",
            "`eventType` must be a non-empty string",
        ),
        (
            post_json(&url, &json!({"clinicApiKey": CLINIC_KEY, "eventType": "x", "object": []})).await,
            400,
            "invalid_event",
            "`object` must be an object",
        ),
        (
            post_json(&url, &json!({"clinicApiKey": CLINIC_KEY, "eventType": "x"})).await,
            400,
            "invalid_event",
            "`object` is missing",
        ),
        (
            post_json(&url, &discharged("key-of-clinic-3", "h")).await,
            401,
            "unauthorized",
            "not known",
        ),
        (
            post_json(&url, &discharged("key-of-clinic-", "h")).await,
            401,
            "unauthorized",
            "not known",
        ),
        (
            raw(r#"{"clinicApiKey":"key-of-clinic-1","eventType":"x","object":{}}"#, "text/plain")
                .await
                .unwrap(),
            415,
            "unsupported_media_type",
            "must be JSON",
        ),
        (
            post_json(
                &url,
                &json!({"clinicApiKey": CLINIC_KEY, "eventType": "x", "object": {"pad": "x".repeat(5000)}}),
            )
            .await,
            413,
            "too_large",
            "at most 4096 bytes",
        ),
    ];
    for (i, (response, status, kind, message)) in cases.into_iter().enumerate() {
        let (got_status, got_kind, got_message) = error_of(response).await;
        assert_eq!(
            (got_status, got_kind.as_str()),
            (status, kind),
            "case {i}: {got_message}"
        );
        assert!(got_message.contains(message), "case {i}: {got_message}");
        assert!(!got_message.contains(CLINIC_KEY), "case {i}: {got_message}");
    }
    assert_eq!(
        b.produced(SFS_TOPIC),
        0,
        "nothing produced for a refused request"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_with_a_duplicated_key_are_refused_by_both_bridges() {
    let b = bridge();
    let app = App::build(b.config(None)).unwrap();
    let (base, stop) = serve(&app).await;
    let http = reqwest::Client::new();
    let post = |path: &'static str, body: String| {
        http.post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let sfs = [
        (
            format!(
                r#"{{"clinicApiKey":"wrong","clinicApiKey":"{CLINIC_KEY}","eventType":"x","object":{{}}}}"#
            ),
            "clinicApiKey",
        ),
        (
            format!(
                r#"{{"clinicApiKey":"{CLINIC_KEY}","eventType":"x","object":{{"hospitalizationId":"a","hospitalizationId":"b"}}}}"#
            ),
            "hospitalizationId",
        ),
    ];
    for (body, key) in sfs {
        let (status, kind, message) = error_of(post("/webhooks/sfs", body).await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (400, "invalid_json"), "{message}");
        assert!(message.contains(&format!("`{key}`")), "{message}");
        assert!(!message.contains(CLINIC_KEY), "{message}");
    }
    let fhircast = [
        (
            r#"{"id":"n","event":{"hub.topic":"session-x","hub.topic":"session-a","hub.event":"Patient-open","context":[]}}"#,
            "hub.topic",
        ),
        (
            r#"{"id":"n","id":"m","event":{"hub.topic":"session-a","hub.event":"Patient-open","context":[]}}"#,
            "id",
        ),
        (
            r#"{"id":"n","event":{"hub.topic":"session-a","hub.event":"Patient-open","context":[{"key":"patient","key":"encounter"}]}}"#,
            "key",
        ),
    ];
    for (body, key) in fhircast {
        let (status, kind, message) =
            error_of(post("/webhooks/fhircast", body.to_owned()).await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (400, "invalid_json"), "{message}");
        assert!(message.contains(&format!("`{key}`")), "{message}");
    }
    assert_eq!(b.produced(SFS_TOPIC), 0, "nothing produced");
    assert_eq!(b.produced(FHIRCAST_TOPIC), 0, "nothing produced");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_broker_gives_503_with_retry_after() {
    let b = bridge();
    let mut config = b.config(None);
    config.webhooks.produce_timeout = Duration::from_secs(1);
    let app = App::build(config).unwrap();
    let (base, stop) = serve(&app).await;
    b.broker.cluster().broker_down(1).unwrap();
    let started = std::time::Instant::now();
    let response = post_json(
        &format!("{base}/webhooks/sfs"),
        &discharged(CLINIC_KEY, "emr-h-2"),
    )
    .await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the produce timeout"
    );
    let (_, kind, _) = error_of(response).await;
    assert_eq!(kind, "unavailable");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhircast_intent_verification_echoes_the_challenge_for_known_topics_only() {
    let b = bridge();
    let app = App::build(b.config(None)).unwrap();
    let (base, stop) = serve(&app).await;
    let get = |query: &'static str| reqwest::get(format!("{base}/webhooks/fhircast?{query}"));

    let ok = get("hub.mode=subscribe&hub.topic=session-a&hub.events=Patient-open&hub.challenge=meu3we944ix80ox&hub.lease_seconds=7200")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(ok.text().await.unwrap(), "meu3we944ix80ox");
    let unsubscribe = get("hub.mode=unsubscribe&hub.topic=Session-Signed-7f3a&hub.challenge=c2")
        .await
        .unwrap();
    assert_eq!(unsubscribe.status(), 200);
    assert_eq!(unsubscribe.text().await.unwrap(), "c2");

    for (query, status) in [
        (
            "hub.mode=subscribe&hub.topic=session-x&hub.challenge=c",
            404,
        ),
        (
            "hub.mode=subscribe&hub.topic=SESSION-A&hub.challenge=c",
            404,
        ),
        ("hub.mode=subscribe&hub.topic=session-a", 400),
        ("hub.topic=session-a&hub.challenge=c", 400),
        ("hub.mode=subscribe&hub.challenge=c", 400),
        ("hub.mode=publish&hub.topic=session-a&hub.challenge=c", 400),
        (
            "hub.mode=subscribe&hub.topic=session-a&hub.challenge=c&hub.lease_seconds=soon",
            400,
        ),
        (
            "hub.mode=denied&hub.topic=session-a&hub.reason=session+unknown",
            200,
        ),
        ("hub.mode=denied&hub.topic=session-x", 404),
    ] {
        let response = get(query).await.unwrap();
        assert_eq!(response.status(), status, "{query}");
        if status != 200 {
            let text = response.text().await.unwrap();
            assert!(!text.contains("meu3we"), "{query}: {text}");
        }
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_are_bounded_tokens_and_every_response_forbids_sniffing() {
    let b = bridge();
    let mut config = b.config(None);
    // Nothing listens there: /readyz answers 503 quickly.
    config.database.url = "postgres://nobody@127.0.0.1:1/none".parse().unwrap();
    let app = App::build(config).unwrap();
    let (base, stop) = serve(&app).await;
    let http = reqwest::Client::new();
    let verify = |challenge: &str| {
        http.get(format!("{base}/webhooks/fhircast"))
            .query(&[
                ("hub.mode", "subscribe"),
                ("hub.topic", "session-a"),
                ("hub.challenge", challenge),
            ])
            .send()
    };
    let longest = "c".repeat(256);
    for good in ["meu3we944ix80ox", "a.b_c~d-e+f/g=", longest.as_str()] {
        let response = verify(good).await.unwrap();
        assert_eq!(response.status(), 200, "{good}");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert_eq!(response.text().await.unwrap(), good);
    }
    let too_long = "c".repeat(257);
    for bad in [
        "<script>alert(1)</script>",
        "<html>",
        "a b",
        "é",
        "a\"b",
        too_long.as_str(),
    ] {
        let (status, kind, message) = error_of(verify(bad).await.unwrap()).await;
        assert_eq!((status, kind.as_str()), (400, "invalid_event"), "{bad}");
        assert!(message.contains("`hub.challenge`"), "{message}");
        assert!(!message.contains(bad), "not reflected: {message}");
    }

    let sfs = format!("{base}/webhooks/sfs");
    let fhircast = format!("{base}/webhooks/fhircast");
    let responses = [
        ("healthz", http.get(format!("{base}/healthz")).send()),
        ("readyz", http.get(format!("{base}/readyz")).send()),
        ("metrics", http.get(format!("{base}/metrics")).send()),
        ("openapi", http.get(format!("{base}/openapi.json")).send()),
        ("no token", http.get(format!("{base}/api/events")).send()),
        ("unknown path", http.get(format!("{base}/nowhere")).send()),
        (
            "wrong method",
            http.delete(format!("{base}/healthz")).send(),
        ),
        ("sfs 415", http.post(&sfs).body("x").send()),
        (
            "sfs 400",
            http.post(&sfs)
                .header("content-type", "application/json")
                .body("{")
                .send(),
        ),
        ("fhircast 400", http.get(&fhircast).send()),
    ];
    for (what, response) in responses {
        let response = response.await.unwrap();
        let headers = response.headers();
        assert_eq!(
            headers
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{what}: {headers:?}"
        );
        if let Some(kind) = headers.get("content-type") {
            let kind = kind.to_str().unwrap();
            assert!(
                !kind.starts_with("text/") || kind.contains("charset=utf-8"),
                "{what}: {kind}"
            );
        }
    }
    stop.cancel();
}

fn notification(topic: &str, event: &str, timestamp: &str, patient: Option<&str>) -> Value {
    let context = match patient {
        Some(id) => {
            json!([{ "key": "patient", "resource": { "resourceType": "Patient", "id": id } }])
        }
        None => json!([]),
    };
    json!({
        "timestamp": timestamp,
        "id": format!("n-{timestamp}"),
        "event": { "hub.topic": topic, "hub.event": event, "context": context }
    })
}

fn sign(body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(HUB_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhircast_notifications_need_a_known_topic_and_a_valid_signature() {
    let b = bridge();
    let app = App::build(b.config(None)).unwrap();
    let (base, stop) = serve(&app).await;
    let url = format!("{base}/webhooks/fhircast");
    let http = reqwest::Client::new();
    let body = serde_json::to_vec(&notification(
        SIGNED_TOPIC,
        "Patient-open",
        "2024-05-01T10:00:00Z",
        Some("p1"),
    ))
    .unwrap();
    let post = |signature: Option<String>, body: Vec<u8>| {
        let mut request = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = signature {
            request = request.header("x-hub-signature", s);
        }
        request.send()
    };

    let missing = post(None, body.clone()).await.unwrap();
    assert_eq!(error_of(missing).await.0, 401);
    let wrong = post(Some(sign(b"another body")), body.clone())
        .await
        .unwrap();
    assert_eq!(error_of(wrong).await.0, 401);
    let garbage = post(Some("sha256=nothex".into()), body.clone())
        .await
        .unwrap();
    assert_eq!(error_of(garbage).await.0, 401);
    let unknown =
        serde_json::to_vec(&notification("session-x", "Patient-open", "t", Some("p1"))).unwrap();
    assert_eq!(error_of(post(None, unknown).await.unwrap()).await.0, 403);
    let shapeless =
        serde_json::to_vec(&json!({"id": "n", "event": {"hub.event": "Patient-open"}})).unwrap();
    let (status, _, message) = error_of(post(None, shapeless).await.unwrap()).await;
    assert_eq!(
        (status, message.as_str()),
        (400, "`event.hub.topic` is missing")
    );
    let no_event_name =
        serde_json::to_vec(&json!({"id": "n", "event": {"hub.topic": "session-a"}})).unwrap();
    assert_eq!(
        error_of(post(None, no_event_name).await.unwrap()).await.0,
        400
    );
    assert_eq!(
        b.produced(FHIRCAST_TOPIC),
        0,
        "nothing produced for a refused request"
    );

    let good = post(Some(sign(&body)), body.clone()).await.unwrap();
    assert_eq!(good.status(), 202);
    let unsigned =
        serde_json::to_vec(&notification("session-a", "Patient-open", "t", Some("p1"))).unwrap();
    assert_eq!(
        post(None, unsigned).await.unwrap().status(),
        202,
        "no secret, no signature needed"
    );
    assert_eq!(b.produced(FHIRCAST_TOPIC), 2);
    let produced = b.read_all(FHIRCAST_TOPIC, 2);
    let keys: Vec<&str> = produced.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.contains(&SIGNED_TOPIC) && keys.contains(&"session-a"),
        "{keys:?}"
    );
    let signed = produced.iter().find(|(k, _)| k == SIGNED_TOPIC).unwrap();
    assert_eq!(
        serde_json::to_vec(&signed.1).unwrap().len(),
        body.len(),
        "produced unchanged"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhircast_context_changes_are_stored_through_the_pipeline() {
    let b = bridge();
    let db = fresh_database().await;
    let running = start(b.config(Some(&db.url))).await;
    let (base, stop) = serve(&running.app).await;
    let url = format!("{base}/webhooks/fhircast");
    for n in [
        notification(
            "session-a",
            "Patient-open",
            "2024-05-01T10:00:00Z",
            Some("p1"),
        ),
        notification(
            "session-a",
            "Patient-close",
            "2024-05-01T10:05:00Z",
            Some("p1"),
        ),
        notification(
            "session-b",
            "patient-open",
            "2024-05-01T10:00:00Z",
            Some("p1"),
        ),
        notification(
            "session-b",
            "Patient-open",
            "2024-05-01T10:07:00Z",
            Some("p2"),
        ),
    ] {
        assert_eq!(post_json(&url, &n).await.status(), 202);
    }
    let client = db.client().await;
    wait_for(Duration::from_secs(30), || async {
        db.stored_offsets_total().await == 4
    })
    .await;
    let rows = client
        .query(
            "SELECT entity_type, entity_id, properties FROM events ORDER BY entity_id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, Value)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "FhircastSession".to_owned(),
                "subscription:open-a/patient".to_owned(),
                json!({ "patient": { "new_value": null, "old_value": "Patient/p1" } }),
            ),
            (
                "FhircastSession".to_owned(),
                "subscription:open-b/patient".to_owned(),
                json!({ "patient": { "new_value": "Patient/p2", "old_value": "Patient/p1" } }),
            ),
        ]
    );
    stop.cancel();
    running.stop().await;
}
