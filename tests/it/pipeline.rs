//! The spine end to end: messages through the embedded Kafka-protocol broker into PostgreSQL,
//! exactly once, with dead letters, restarts, fencing and database outages.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use event_manager::app::App;
use event_manager::broker::EmbeddedBroker;
use event_manager::config::Config;
use event_manager::pipeline::{self, PipelineHandle};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::kafka::{kafka, unique};
use crate::support::{fresh_database, wait_for, TestDatabase};

const PARTITIONS: i32 = 6;

/// A broker with an ESOZ topic (6 partitions) and its dead-letter topic, both named for this
/// test, a database, and a topics directory with the ESOZ rule for them.
pub(crate) struct Setup {
    /// librdkafka's MockCluster when the test runs on it (kept running while the test does);
    /// `None` on the shared Apache Kafka of the test binary (tests/it/support/kafka.rs).
    pub(crate) _mock: Option<EmbeddedBroker>,
    pub(crate) bootstrap: String,
    pub(crate) topic: String,
    pub(crate) dlq: String,
    pub(crate) group: String,
    pub(crate) db: TestDatabase,
    pub(crate) topics: tempfile::TempDir,
}

/// The ESOZ rule for `topic` (topics/*.toml syntax).
pub(crate) fn esoz_rule(topic: &str, dlq: &str) -> String {
    format!(
        "[[topic]]\nname = \"{topic}\"\nformat = \"esoz\"\ndead_letter_topic = \"{dlq}\"\ncapture = [\"employee_id\"]\npartitions = {PARTITIONS}\n"
    )
}

/// On the real broker, with topics of this test's own (`config` is topic-level, e.g.
/// `retention.ms`).
pub(crate) async fn setup_with(config: &[(&str, &str)]) -> Setup {
    let db = fresh_database().await;
    let kafka = kafka();
    let topic = unique("esoz");
    let dlq = format!("{topic}.dlq");
    kafka.create_topic(&topic, PARTITIONS, config).await;
    kafka.create_topic(&dlq, 1, &[]).await;
    let topics = tempfile::tempdir().unwrap();
    std::fs::write(topics.path().join("esoz.toml"), esoz_rule(&topic, &dlq)).unwrap();
    Setup {
        _mock: None,
        bootstrap: kafka.bootstrap(),
        topic,
        dlq,
        group: unique("group"),
        db,
        topics,
    }
}

/// On the real broker. Its topics keep messages forever: tests produce messages with old
/// timestamps, which the broker's default retention (7 days by timestamp) would delete.
pub(crate) async fn setup() -> Setup {
    setup_with(&[("retention.ms", "-1")]).await
}

/// On librdkafka's MockCluster.
pub(crate) async fn setup_mock() -> Setup {
    let db = fresh_database().await;
    let broker = EmbeddedBroker::start(1).expect("broker");
    let topic = "event_manager_topic".to_owned();
    let dlq = "event_manager_topic.dlq".to_owned();
    broker.create_topic(&topic, PARTITIONS).unwrap();
    broker.create_topic(&dlq, 1).unwrap();
    let topics = tempfile::tempdir().unwrap();
    std::fs::write(topics.path().join("esoz.toml"), esoz_rule(&topic, &dlq)).unwrap();
    Setup {
        bootstrap: broker.bootstrap_servers(),
        _mock: Some(broker),
        topic,
        dlq,
        group: "test-group".to_owned(),
        db,
        topics,
    }
}

impl Setup {
    pub(crate) fn config(&self, database_url: &str) -> Config {
        let mut config = Config::default();
        config.kafka.bootstrap_servers = self.bootstrap.clone();
        config.kafka.group_id = self.group.clone();
        config.kafka.session_timeout = Duration::from_secs(6);
        config.database.url = database_url.parse().unwrap();
        config.pipeline.topics_dir = self.topics.path().to_owned();
        config.pipeline.batch_size = 500;
        config.pipeline.batch_linger = Duration::from_millis(20);
        config.pipeline.max_retry_backoff = Duration::from_millis(500);
        config
    }

    pub(crate) fn producer(&self) -> FutureProducer {
        producer(&self.bootstrap)
    }

    /// Sends one message to this test's topic.
    pub(crate) async fn produce(
        &self,
        producer: &FutureProducer,
        partition: i32,
        key: Option<&str>,
        payload: &[u8],
    ) {
        produce(producer, &self.topic, partition, key, payload).await;
    }
}

/// An idempotent producer (ordered, no duplicates per partition).
pub(crate) fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .unwrap()
}

pub(crate) struct Running {
    pub(crate) app: App,
    pub(crate) handle: PipelineHandle,
    pub(crate) stop: CancellationToken,
}

pub(crate) async fn start(config: Config) -> Running {
    let app = App::build(config).expect("app");
    app.migrate(&CancellationToken::new()).await.unwrap();
    let stop = CancellationToken::new();
    let handle = pipeline::start(
        &app.config,
        app.rules.clone(),
        app.store.clone(),
        app.pipeline_metrics.clone(),
        app.readiness.clone(),
        stop.clone(),
    )
    .expect("pipeline");
    Running { app, handle, stop }
}

impl Running {
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle.stopped())
            .await
            .expect("the consumer stops within 30 s");
    }
}

pub(crate) async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&str>,
    payload: &[u8],
) {
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("produce");
}

pub(crate) fn t(sec: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + sec, 0).unwrap()
}

pub(crate) fn esoz(
    entity_type: &str,
    id: &str,
    status: &Value,
    time: DateTime<Utc>,
    employee: Option<&str>,
) -> Vec<u8> {
    let (event_type, attr) = if entity_type == "LegalEntity" {
        ("StateChangeEvent", "is_suspended")
    } else {
        ("StatusChangeEvent", "status")
    };
    let mut properties = serde_json::Map::new();
    properties.insert(attr.into(), json!({ "new_value": status }));
    if let Some(e) = employee {
        properties.insert("employee_id".into(), json!({ "new_value": e }));
    }
    json!({
        "event_type": event_type,
        "entity_type": entity_type,
        "entity_id": id,
        "properties": properties,
        "event_time": time.to_rfc3339(),
        "changed_by": format!("user-{id}"),
    })
    .to_string()
    .into_bytes()
}

/// Keyed messages of one partition, in order.
pub(crate) type Partition = Vec<(String, Vec<u8>)>;

/// An expected row of `events`, as the test's own model of change detection
/// (docs/architecture.md) predicts it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Row {
    partition: i32,
    offset: i64,
    entity_type: String,
    entity_id: String,
    properties: String,
    event_time: DateTime<Utc>,
    changed_by: Option<String>,
}

/// Generates a deterministic ESOZ stream: new entities, real changes, repeats and out-of-order
/// deliveries, keyed so that each entity stays on one partition. Returns the messages per
/// partition and the rows the EventDB must end up with.
pub(crate) fn scripted_stream(total: usize) -> (Vec<Partition>, Vec<Row>) {
    const TYPES: &[(&str, &[&str])] = &[
        ("EmployeeRequest", &["NEW", "APPROVED", "REJECTED"]),
        (
            "Declaration",
            &["pending_verification", "active", "terminated"],
        ),
        ("MedicationRequest", &["ACTIVE", "COMPLETED", "REJECTED"]),
        ("LegalEntity", &["false", "true"]),
    ];
    let mut rng = event_manager::demo::feed::Rng::new(42);
    let mut per_partition: Vec<Partition> = vec![Vec::new(); PARTITIONS as usize];
    // Model: per entity, its partition, last value and time.
    struct Known {
        kind: usize,
        partition: i32,
        value: usize,
        time: i64,
    }
    let mut known: Vec<(String, Known)> = Vec::new();
    let mut expected = Vec::new();
    for n in 0..total {
        let roll = rng.below(100);
        let (id, kind, partition, status, time, prior) = if known.is_empty() || roll < 20 {
            let id = format!("e{n:06}");
            let kind = rng.below(TYPES.len());
            let partition = rng.below(PARTITIONS as usize) as i32;
            known.push((
                id.clone(),
                Known {
                    kind,
                    partition,
                    value: 0,
                    time: n as i64,
                },
            ));
            (id, kind, partition, 0, n as i64, None)
        } else {
            let i = rng.below(known.len());
            let (id, k) = &known[i];
            let statuses = TYPES[k.kind].1.len();
            let (status, time) = match roll {
                20..=69 => ((k.value + 1 + rng.below(statuses - 1)) % statuses, n as i64), // change
                70..=84 => (k.value, n as i64),                                            // repeat
                _ => ((k.value + 1) % statuses, k.time - 1), // older, different
            };
            (
                id.clone(),
                k.kind,
                k.partition,
                status,
                time,
                Some((i, k.value, k.time)),
            )
        };
        let (entity_type, statuses) = TYPES[kind];
        let value = if entity_type == "LegalEntity" {
            json!(statuses[status] == "true")
        } else {
            json!(statuses[status])
        };
        let employee = (entity_type == "EmployeeRequest").then(|| format!("emp-{id}"));
        let payload = esoz(entity_type, &id, &value, t(time), employee.as_deref());
        let offset = per_partition[partition as usize].len() as i64;
        per_partition[partition as usize].push((id.clone(), payload));
        // ESOZ publishes changes only: an entity's first status is an event from NULL.
        let old_value = match prior {
            None => Value::Null,
            Some((i, old, old_time)) => {
                let entry = &mut known[i].1;
                if time < old_time {
                    continue; // stale
                }
                if status == old {
                    entry.time = entry.time.max(time);
                    continue; // unchanged
                }
                entry.value = status;
                entry.time = time;
                json!(statuses[old])
            }
        };
        let attr = if entity_type == "LegalEntity" {
            "is_suspended"
        } else {
            "status"
        };
        let mut props = BTreeMap::new();
        props.insert(
            attr.to_owned(),
            json!({ "new_value": statuses[status], "old_value": old_value }),
        );
        if let Some(e) = &employee {
            props.insert("employee_id".to_owned(), json!({ "new_value": e }));
        }
        expected.push(Row {
            partition,
            offset,
            entity_type: entity_type.to_owned(),
            entity_id: id.clone(),
            properties: serde_json::to_string(&props).unwrap(),
            event_time: t(time),
            changed_by: Some(format!("user-{id}")),
        });
    }
    expected.sort();
    (per_partition, expected)
}

impl Row {
    /// The same row read from another partition (for streams spread over several topics).
    pub(crate) fn on_partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// The partition it was read from.
    pub(crate) fn partition(&self) -> i32 {
        self.partition
    }
}

pub(crate) async fn stored_rows(db: &TestDatabase) -> Vec<Row> {
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT source_partition, source_offset, entity_type, entity_id, properties, event_time, changed_by, event_type \
             FROM events ORDER BY source_partition, source_offset",
            &[],
        )
        .await
        .unwrap();
    let mut out: Vec<Row> = rows
        .iter()
        .map(|r| {
            let props: Value = r.get(4);
            let sorted: BTreeMap<String, Value> = serde_json::from_value(props).unwrap();
            Row {
                partition: r.get(0),
                offset: r.get(1),
                entity_type: r.get(2),
                entity_id: r.get(3),
                properties: serde_json::to_string(&sorted).unwrap(),
                event_time: r.get(5),
                changed_by: r.get(6),
            }
        })
        .collect();
    out.sort();
    out
}

/// Compares the stored rows with the model's, row by row, printing the figures first so that a
/// failure explains itself: messages sent, rows expected and found, duplicates, lost and
/// unexpected rows.
pub(crate) fn compare(test: &str, sent: usize, expected: &[Row], found: &[Row]) {
    use std::collections::BTreeSet;
    let distinct: BTreeSet<&Row> = found.iter().collect();
    let want: BTreeSet<&Row> = expected.iter().collect();
    let duplicates = found.len() - distinct.len();
    let lost: Vec<&&Row> = want.difference(&distinct).collect();
    let unexpected: Vec<&&Row> = distinct.difference(&want).collect();
    println!(
        "{test}: sent {sent}, expected {}, found {}, duplicates {duplicates}, lost {}, \
         unexpected {}",
        expected.len(),
        found.len(),
        lost.len(),
        unexpected.len()
    );
    assert!(
        duplicates == 0 && lost.is_empty() && unexpected.is_empty(),
        "{test}: first lost {:?}, first unexpected {:?}",
        lost.first(),
        unexpected.first()
    );
    assert_eq!(found, expected);
}

pub(crate) async fn count(db: &TestDatabase, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Sends every partition's messages, in order per partition (idempotent producer), many in
/// flight at once.
pub(crate) async fn produce_all(producer: &FutureProducer, topic: &str, stream: &[Partition]) {
    for (p, msgs) in stream.iter().enumerate() {
        for chunk in msgs.chunks(20_000) {
            let sends = chunk
                .iter()
                .map(|(key, payload)| produce(producer, topic, p as i32, Some(key), payload));
            futures::future::join_all(sends).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_over_six_partitions_give_exactly_the_expected_rows() {
    let s = setup().await;
    let (stream, expected) = scripted_stream(10_000);
    let total: usize = stream.iter().map(Vec::len).sum();
    produce_all(&s.producer(), &s.topic, &stream).await;

    // The captured identifier gets its own indexes, lists of up to two days the GIN index on
    // `properties`, and `status` the index of its values (`api.indexed_values`' default), built
    // in the background while the pipeline ingests (as `run` does).
    let mut config = s.config(&s.db.url);
    config.api.indexed_attributes = vec!["employee_id".into()];
    config.api.events_list_max_period_hours = 48;
    let running = start(config).await;
    running.app.build_attribute_indexes(&running.stop);
    wait_for(Duration::from_secs(120), || async {
        s.db.stored_offsets_total().await == total as i64
    })
    .await;
    let mut indexes =
        event_manager::store::attribute_indexes::attribute_indexes("employee_id").to_vec();
    indexes.push(event_manager::store::attribute_indexes::properties_index());
    indexes.push(event_manager::store::attribute_indexes::value_index(
        "status",
    ));
    wait_for(Duration::from_secs(60), || async {
        let mut valid = 0;
        for index in &indexes {
            valid += count(
                &s.db,
                &format!(
                    "SELECT count(*) FROM pg_index WHERE indexrelid = to_regclass('{}') \
                     AND indisvalid",
                    index.name
                ),
            )
            .await;
        }
        valid == 4
    })
    .await;
    running.stop().await;
    // Complete despite the writes during the build: the value index finds what a scan finds.
    let client = s.db.client().await;
    client
        .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            "EXPLAIN SELECT count(*) FROM events WHERE jsonb_exists(properties, 'employee_id') \
             AND properties -> 'employee_id' -> 'new_value' = '\"emp-e7\"'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.join("\n").contains(&indexes[1].name), "{plan:?}");
    let by_index: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE jsonb_exists(properties, 'employee_id') \
             AND properties -> 'employee_id' -> 'new_value' IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let by_scan = count(
        &s.db,
        "SELECT count(*) FROM events WHERE properties -> 'employee_id' -> 'new_value' IS NOT NULL",
    )
    .await;
    assert!(by_scan > 0);
    assert_eq!(by_index, by_scan);

    compare(
        "ten thousand messages",
        total,
        &expected,
        &stored_rows(&s.db).await,
    );
    // ESOZ's first status of every entity is an event from NULL, and only that one.
    let first_seen_events = count(
        &s.db,
        "SELECT count(*) FROM events e WHERE e.properties -> (CASE WHEN e.entity_type = 'LegalEntity' THEN 'is_suspended' ELSE 'status' END) ->> 'old_value' IS NULL",
    )
    .await;
    let entities = count(&s.db, "SELECT count(DISTINCT entity_id) FROM events").await;
    assert_eq!(first_seen_events, entities);
    assert!(
        entities > 1000,
        "the stream has many new entities: {entities}"
    );
    assert!(
        expected.len() > 3000,
        "the stream has enough changes: {}",
        expected.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_loses_and_duplicates_nothing() {
    let s = setup().await;
    let (stream, expected) = scripted_stream(4_000);
    let total: usize = stream.iter().map(Vec::len).sum();
    let producer = s.producer();
    let half: Vec<Vec<_>> = stream.iter().map(|p| p[..p.len() / 2].to_vec()).collect();
    let rest: Vec<Vec<_>> = stream.iter().map(|p| p[p.len() / 2..].to_vec()).collect();
    produce_all(&producer, &s.topic, &half).await;

    let first = start(s.config(&s.db.url)).await;
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await > 0
    })
    .await;
    // Keep producing while the first consumer stops after some batches.
    let feeding = produce_all(&producer, &s.topic, &rest);
    let (_, ()) = tokio::join!(feeding, first.stop());

    let second = start(s.config(&s.db.url)).await;
    wait_for(Duration::from_secs(120), || async {
        s.db.stored_offsets_total().await == total as i64
    })
    .await;
    second.stop().await;
    compare(
        "restart mid-stream",
        total,
        &expected,
        &stored_rows(&s.db).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_go_to_the_dead_letter_topic_with_the_reason() {
    let s = setup().await;
    let producer = s.producer();
    let good_a = esoz("Declaration", "d1", &json!("active"), t(0), None);
    let good_b = esoz("Declaration", "d1", &json!("terminated"), t(1), None);
    s.produce(&producer, 0, Some("d1"), &good_a).await;
    s.produce(&producer, 0, Some("bad"), b"{not json").await;
    s.produce(&producer, 0, Some("d1"), &good_b).await;
    s.produce(&producer, 0, None, br#"{"event_type":"StatusChangeEvent","entity_type":"X","properties":{"status":{"new_value":"a"}},"event_time":"2024-01-01T00:00:00Z"}"#).await;

    let running = start(s.config(&s.db.url)).await;
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await == 4
    })
    .await;
    running.stop().await;
    // The first status and the change of d1; the bad messages in between lose nothing.
    assert_eq!(count(&s.db, "SELECT count(*) FROM events").await, 2);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[s.dlq.as_str()]).unwrap();
    let mut letters = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while letters.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers: HashMap<String, String> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            letters.push((m.payload().map(<[u8]>::to_vec), headers));
        }
    }
    let events = count(&s.db, "SELECT count(*) FROM events").await;
    println!(
        "dead letters: sent 4, expected 2 events and 2 dead letters, found {events} events and {} \
         dead letters",
        letters.len()
    );
    assert_eq!(letters.len(), 2);
    let (payload, h) = &letters[0];
    assert_eq!(payload.as_deref(), Some(&b"{not json"[..]));
    assert_eq!(h["em-dlq-reason"], "invalid_encoding");
    assert_eq!(h["em-dlq-source-topic"], s.topic);
    assert_eq!(h["em-dlq-source-partition"], "0");
    assert_eq!(h["em-dlq-source-offset"], "1");
    assert_eq!(h["em-dlq-format"], "esoz");
    let (_, h) = &letters[1];
    assert_eq!(h["em-dlq-reason"], "missing_field");
    assert!(h["em-dlq-detail"].contains("entity_id"), "{h:?}");
    assert_eq!(h["em-dlq-source-offset"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_pauses_and_loses_nothing() {
    let s = setup().await;
    let proxy = crate::support::TcpProxy::start(&s.db.url).await;
    let (stream, expected) = scripted_stream(2_000);
    let total: usize = stream.iter().map(Vec::len).sum();
    let producer = s.producer();
    let half: Vec<Vec<_>> = stream.iter().map(|p| p[..p.len() / 2].to_vec()).collect();
    let rest: Vec<Vec<_>> = stream.iter().map(|p| p[p.len() / 2..].to_vec()).collect();
    produce_all(&producer, &s.topic, &half).await;

    let mut config = s.config(&proxy.url());
    config.database.connect_timeout = Duration::from_secs(1);
    let running = start(config).await;
    wait_for(Duration::from_secs(60), || async {
        s.db.stored_offsets_total().await > 0
    })
    .await;

    proxy.set_down(true);
    produce_all(&producer, &s.topic, &rest).await;
    let readiness = running.app.readiness.clone();
    wait_for(Duration::from_secs(30), || {
        let r = readiness.clone();
        async move { !r.database_up() }
    })
    .await;
    assert_eq!(running.app.pipeline_metrics.database_up.get(), 0);
    let during = s.db.stored_offsets_total().await;
    assert!(
        during < total as i64,
        "nothing is written during the outage"
    );

    proxy.set_down(false);
    wait_for(Duration::from_secs(120), || async {
        s.db.stored_offsets_total().await == total as i64
    })
    .await;
    assert!(running.app.readiness.database_up());
    running.stop().await;
    compare(
        "database outage",
        total,
        &expected,
        &stored_rows(&s.db).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_entity_through_several_consumers_at_once_changes_once() {
    use event_manager::detect::{ChangeDetector, DetectOptions, StateWrite};
    use event_manager::model::{Attributes, Observation, ObservationKind, Scope, SourceRef};
    use event_manager::store::{BatchChanges, NewEvent, OffsetFence, StoreError};

    let db = fresh_database().await;
    let obs = |status: &str, sec: i64| Observation {
        event_type: "StatusChangeEvent".into(),
        entity_type: "Declaration".into(),
        entity_id: "shared".into(),
        kind: ObservationKind::Snapshot,
        attributes: Attributes::from([("status".to_owned(), Some(status.to_owned()))]),
        captured: BTreeMap::new(),
        event_time: t(sec),
        changed_by: None,
        version: None,
        scope: Scope::Unscoped,
    };
    let store = Arc::new(db.store.clone());
    let apply = |partition: i32, o: Observation| {
        let store = store.clone();
        async move {
            let detector = ChangeDetector::new(DetectOptions::default());
            // Stored again when another consumer moved the state first, as the consumer does.
            loop {
                let stored = store
                    .apply_batch(
                        "g",
                        &[OffsetFence {
                            topic: "t".into(),
                            partition,
                            expected: None,
                            next: 1,
                        }],
                        &[("Declaration".into(), "shared".into())],
                        |states| {
                            let source = SourceRef {
                                topic: "t".into(),
                                partition,
                                offset: 0,
                            };
                            let d = detector.detect(&o, &source, states);
                            BatchChanges {
                                events: d
                                    .event
                                    .into_iter()
                                    .map(|event| NewEvent {
                                        event,
                                        source: source.clone(),
                                        seq: 0,
                                    })
                                    .collect(),
                                states: d
                                    .dirty
                                    .into_iter()
                                    .map(|(key, before)| StateWrite {
                                        state: states[&key].clone(),
                                        key,
                                        before,
                                    })
                                    .collect(),
                            }
                        },
                    )
                    .await;
                match stored {
                    Err(StoreError::StateMoved) => continue,
                    stored => break stored.unwrap(),
                }
            }
        }
    };
    // A new entity seen by twelve consumers at once, each with another status: serialised (each
    // state write a compare-and-set), the first is the baseline and every other one a change
    // from the state committed before it.
    let reports =
        futures::future::join_all((0..12).map(|p| apply(200 + p, obs(&format!("s{p}"), 0)))).await;
    let inserted: u64 = reports.iter().map(|r| r.events_inserted).sum();
    assert_eq!(inserted, 11);
    let client = db.client().await;
    let chain: Vec<(String, String)> = client
        .query("SELECT properties->'status'->>'old_value', properties->'status'->>'new_value' FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let olds: std::collections::BTreeSet<&str> = chain.iter().map(|(o, _)| o.as_str()).collect();
    let news: std::collections::BTreeSet<&str> = chain.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        olds.len(),
        11,
        "every old value is a distinct committed state: {chain:?}"
    );
    assert_eq!(news.len(), 11);
    assert_eq!(
        olds.difference(&news).count(),
        1,
        "exactly one baseline starts the chain"
    );
    client
        .batch_execute("TRUNCATE events, entity_state, entities")
        .await
        .unwrap();

    apply(100, obs("active", 0)).await;
    // Twelve consumers see the same change at once, on twelve partitions.
    let reports = futures::future::join_all((0..12).map(|p| apply(p, obs("terminated", 5)))).await;
    let inserted: u64 = reports.iter().map(|r| r.events_inserted).sum();
    assert_eq!(inserted, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM events").await, 1);
}
