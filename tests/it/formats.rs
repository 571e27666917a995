//! One end-to-end test per source format: the shipped topic rules, real Kafka protocol through
//! the embedded broker, and the exact events in PostgreSQL.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use event_manager::broker::EmbeddedBroker;
use event_manager::config::{load_topic_rules, Config};
use event_manager::formats::SessionIds;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

use crate::pipeline::{count, start};
use crate::support::{fresh_database, wait_for, TestDatabase};

struct Env {
    broker: EmbeddedBroker,
    db: TestDatabase,
    producer: FutureProducer,
    sent: HashMap<(String, i32), i64>,
}

const T0: i64 = 1_714_550_400_000; // 2024-05-01T08:00:00Z

async fn env() -> Env {
    let db = fresh_database().await;
    let broker = EmbeddedBroker::start(1).unwrap();
    let rules = load_topic_rules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("topics")).unwrap();
    broker.create_rule_topics(&rules, Some(1)).unwrap();
    for topic in event_manager::demo::feed::PATTERN_TOPICS {
        broker.create_topic(topic, 1).unwrap();
    }
    let producer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .create()
        .unwrap();
    Env {
        broker,
        db,
        producer,
        sent: HashMap::new(),
    }
}

impl Env {
    async fn send(
        &mut self,
        topic: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
        ts_offset_s: i64,
    ) {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let record = FutureRecord::<str, [u8]>::to(topic)
            .partition(0)
            .payload(payload)
            .headers(h)
            .timestamp(T0 + ts_offset_s * 1000);
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
        *self.sent.entry((topic.to_owned(), 0)).or_default() += 1;
    }

    /// Runs the pipeline with the shipped rules until every sent message is accounted for, and
    /// returns the events in message order.
    async fn run(&self) -> Vec<(String, String, String, Value)> {
        let mut config = Config::default();
        config.kafka.bootstrap_servers = self.broker.bootstrap_servers();
        config.kafka.group_id = "formats".into();
        config.database.url = self.db.url.parse().unwrap();
        config.pipeline.topics_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
        config.pipeline.batch_linger = Duration::from_millis(20);
        let running = start(config).await;
        let total: i64 = self.sent.values().sum();
        wait_for(Duration::from_secs(60), || async {
            self.db.stored_offsets_total().await == total
        })
        .await;
        running.stop().await;
        self.db
            .client()
            .await
            .query(
                "SELECT event_type, entity_type, entity_id, properties FROM events \
                 ORDER BY source_topic, source_partition, source_offset, source_seq",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }
}

fn change(attr: &str, new: Value, old: Value) -> Value {
    json!({ attr: { "new_value": new, "old_value": old } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehealth_dk_context_events_as_sent_by_real_producers() {
    let mut e = env().await;
    let reference = "https://cp.ehealth.example.dk/fhir/CarePlan/77";
    let context = |event: &str, version: &str, status: Option<&str>| {
        let mut body = json!({"messageType": "EHealthContextEvent", "messageVersion": "1.0", "eventType": event,
            "resourceReference": reference, "resourceVersion": version, "context": "status"});
        if let Some(s) = status {
            body["status"] = json!(s);
        }
        body.to_string().into_bytes()
    };
    let topic = "ehealth-careplan.status";
    // Properties as headers, in the lower-case spelling some producers use, with capture noise.
    let headers = [
        ("messagetype", "EHealthContextEvent"),
        ("resourceprofile", "ehealth-careplan"),
        ("server", "nginx"),
        ("content-type", "application/json"),
    ];
    e.send(topic, &headers, &context("created", "1", Some("draft")), 0)
        .await; // baseline
    e.send(topic, &headers, &context("updated", "2", Some("active")), 1)
        .await; // change
    e.send(topic, &headers, &context("updated", "3", None), 2)
        .await; // no status: nothing known
    e.send(
        topic,
        &headers,
        &context("updated", "1", Some("revoked")),
        3,
    )
    .await; // older version: stale
    e.send(
        topic,
        &[("messageType", "EHealthSimpleEvent")],
        &context("updated", "5", Some("revoked")),
        4,
    )
    .await; // not selected
    e.send(
        topic,
        &headers,
        &context("updated", "4", Some("completed")),
        5,
    )
    .await; // change
    e.send(topic, &headers, b"{\"messageType\": 5}", 6).await; // dead letter
                                                               // A bridge forwarding the JMS message as headers: the status in a header, a stub body.
    let with_status = |status: &'static str| {
        let mut h = headers.to_vec();
        h.push(("status", status));
        h
    };
    e.send(
        topic,
        &with_status("revoked"),
        &context("updated", "5", None),
        7,
    )
    .await; // change, from the header
    e.send(
        topic,
        &with_status("draft"),
        &context("updated", "6", Some("revoked")),
        8,
    )
    .await; // the body wins: unchanged
    let events = e.run().await;
    assert_eq!(
        events,
        vec![
            (
                "StatusChangeEvent".into(),
                "CarePlan".into(),
                reference.into(),
                change("status", json!("active"), json!("draft"))
            ),
            (
                "StatusChangeEvent".into(),
                "CarePlan".into(),
                reference.into(),
                change("status", json!("completed"), json!("active"))
            ),
            (
                "StatusChangeEvent".into(),
                "CarePlan".into(),
                reference.into(),
                change("status", json!("revoked"), json!("completed"))
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcp_v2_timeslots_and_patient_calls() {
    let mut e = env().await;
    let envelope = |resource: &str, kind: &str, target: &str, data: Value, date: &str| {
        json!({"group": "rcp-v2", "namespace": "", "uid": "u", "date": date, "resource": resource, "type": kind,
               "target": target, "data": data, "metadata": {"trace_id": "tr-1"}})
        .to_string()
        .into_bytes()
    };
    let t = "rcp-v2.events";
    e.send(
        t,
        &[],
        &envelope(
            "timeslots",
            "created",
            "ts-1",
            json!({"spec": {"user_uid": "u1"}}),
            "2024-05-01T08:00:00Z",
        ),
        0,
    )
    .await;
    e.send(
        t,
        &[],
        &envelope(
            "timeslots",
            "update",
            "ts-1",
            json!({"updater_uid": "u2"}),
            "2024-05-01T08:01:00Z",
        ),
        1,
    )
    .await;
    e.send(
        t,
        &[],
        &envelope(
            "timeslots",
            "deleted",
            "ts-1",
            json!({}),
            "2024-05-01T08:02:00Z",
        ),
        2,
    )
    .await;
    e.send(
        t,
        &[],
        &envelope(
            "patient_calls",
            "updated",
            "call-9",
            json!({"status": "finished", "user_uid": "u3"}),
            "2024-05-01T08:03:00Z",
        ),
        3,
    )
    .await;
    e.send(
        t,
        &[],
        &envelope("rooms", "updated", "r-1", json!({}), "2024-05-01T08:04:00Z"),
        4,
    )
    .await; // ignored resource
    let events = e.run().await;
    assert_eq!(
        events,
        vec![
            (
                "LifecycleChangeEvent".into(),
                "timeslots".into(),
                "ts-1".into(),
                change("lifecycle", json!("updated"), json!("created"))
            ),
            (
                "StatusChangeEvent".into(),
                "patient_calls".into(),
                "call-9".into(),
                change("status", json!("finished"), Value::Null)
            ),
        ]
    );
    let changed_by: Vec<Option<String>> =
        e.db.client()
            .await
            .query("SELECT changed_by FROM events ORDER BY source_offset", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(changed_by, [Some("u2".to_owned()), Some("u3".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfs_discharges_records_and_unknown_events() {
    let mut e = env().await;
    let t = "sfs.events";
    let batch = json!({"clinicApiKey": "secret-key", "eventType": "hospitalizations.discharged", "object": {"objectType": "hospitalizations", "id": "op-1",
        "hospitalizations": [{"id": "s1", "hospitalizationId": "emr-1"}, {"id": "s2", "hospitalizationId": "emr-2"}]}});
    e.send(t, &[], batch.to_string().as_bytes(), 0).await;
    e.send(
        t,
        &[],
        br#"{"eventType": "flowsheet.report_ready", "object": {"id": "x"}}"#,
        1,
    )
    .await; // ignored
    e.send(t, &[], br#"{"eventType": "hospitalization.discharged", "object": {"id": "s1", "hospitalizationId": "emr-1"}}"#, 2).await; // repeat
    e.send(t, &[], br#"{"eventType": "hospitalization.discharged"}"#, 3)
        .await; // dead letter
    let events = e.run().await;
    let discharged = |id: &str| {
        (
            "StatusChangeEvent".to_owned(),
            "Hospitalization".to_owned(),
            id.to_owned(),
            change("status", json!("discharged"), Value::Null),
        )
    };
    assert_eq!(events.len(), 2);
    assert_eq!(
        (&events[0].0, &events[0].1, &events[0].2),
        (
            &discharged("emr-1").0,
            &discharged("emr-1").1,
            &discharged("emr-1").2
        )
    );
    assert_eq!(events[0].3["status"], discharged("emr-1").3["status"]);
    assert_eq!(events[1].2, "emr-2");
    // The clinic API key is stored nowhere.
    let leaks = count(
        &e.db,
        "SELECT count(*) FROM events WHERE properties::text LIKE '%secret-key%'",
    )
    .await;
    assert_eq!(leaks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhircast_context_switches_in_order_with_lenient_timestamps() {
    let mut e = env().await;
    let t = "fhircast.events";
    let note = |ts: &str, event: &str, patient: Option<&str>| {
        let context = match patient {
            Some(p) => {
                json!([{"key": "patient", "resource": {"resourceType": "Patient", "id": p}}])
            }
            None => json!([]),
        };
        json!({"timestamp": ts, "id": "n", "event": {"hub.topic": "sess-1", "hub.event": event, "context": context}})
            .to_string()
            .into_bytes()
    };
    e.send(
        t,
        &[],
        &note("2024-05-01T08:00:00Z", "Patient-open", Some("p1")),
        0,
    )
    .await; // baseline
    e.send(
        t,
        &[],
        &note("2024-05-01T08:01:00Z", "patient-OPEN", Some("p2")),
        1,
    )
    .await; // change (case-insensitive)
    e.send(
        t,
        &[],
        &note("2024-05-01T07:59:00Z", "Patient-open", Some("p0")),
        2,
    )
    .await; // older: ignored
    e.send(
        t,
        &[],
        &note("2024-05-01T08:02:00Z", "DiagnosticReport-update", None),
        3,
    )
    .await; // never changes context
            // A malformed timestamp: the receive time (the Kafka timestamp, 08:04) stands in.
    e.send(
        t,
        &[],
        &note("2024-05-01T08:03:00.1 +00", "Patient-close", Some("p2")),
        240,
    )
    .await;
    let events = e.run().await;
    let patient = |v: Value, o: Value| {
        (
            "ContextChangeEvent".to_owned(),
            "FhircastSession".to_owned(),
            format!("{}/patient", SessionIds::default().session("sess-1")),
            change("patient", v, o),
        )
    };
    let got: Vec<_> = events
        .into_iter()
        .filter(|(_, _, id, _)| {
            *id == format!("{}/patient", SessionIds::default().session("sess-1"))
        })
        .collect();
    assert_eq!(
        got,
        vec![
            patient(json!("Patient/p2"), json!("Patient/p1")),
            patient(Value::Null, json!("Patient/p2")),
        ]
    );
}

/// Closing an anchor context closes what its open set: a study the report's open set closes
/// with the report, also when the close lists it only to identify the report; keys the open did
/// not set stay, even when the close lists them, and so does the session's patient; a patient
/// close still closes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhircast_closing_an_anchor_closes_the_keys_its_open_set() {
    let mut e = env().await;
    let t = "fhircast.events";
    let note = |minute: u32, event: &str, context: &[(&str, &str, &str)]| {
        let context: Vec<Value> = context
            .iter()
            .map(
                |(key, kind, id)| json!({"key": key, "resource": {"resourceType": kind, "id": id}}),
            )
            .collect();
        json!({"timestamp": format!("2024-05-01T08:{minute:02}:00Z"), "id": "n",
               "event": {"hub.topic": "sess-2", "hub.event": event, "context": context}})
        .to_string()
        .into_bytes()
    };
    let patient = ("patient", "Patient", "p1");
    let encounter = ("encounter", "Encounter", "e1");
    let report = |id| ("report", "DiagnosticReport", id);
    let study = |id| ("study", "ImagingStudy", id);
    let steps = [
        note(0, "Patient-open", &[patient]),
        note(1, "Encounter-open", &[encounter, patient]),
        note(
            2,
            "DiagnosticReport-open",
            &[report("r1"), patient, study("s1")],
        ),
        // Lists the study (set by the open) and the encounter (not set by it) to identify r1.
        note(
            3,
            "DiagnosticReport-close",
            &[report("r1"), patient, study("s1"), encounter],
        ),
        note(4, "ImagingStudy-open", &[study("s2"), patient]),
        note(5, "DiagnosticReport-open", &[report("r2"), patient]),
        // Lists a study the report's open did not set: it stays.
        note(
            6,
            "DiagnosticReport-close",
            &[report("r2"), patient, study("s2")],
        ),
        note(7, "Patient-close", &[patient]),
    ];
    for (i, step) in steps.iter().enumerate() {
        e.send(t, &[], step, i as i64).await;
    }
    // The session's id hides its topic: an unkeyed hash without `webhooks.fhircast.topic_id_key`.
    let session = SessionIds::default().session("sess-2");
    let got: Vec<(String, Value)> = e
        .run()
        .await
        .into_iter()
        .filter(|(_, _, id, _)| id.starts_with(&format!("{session}/")))
        .map(|(_, _, id, properties)| (id, properties))
        .collect();
    let change = |key: &str, new: Option<&str>, old: Option<&str>| {
        (
            format!("{session}/{key}"),
            change(key, json!(new), json!(old)),
        )
    };
    assert_eq!(
        got,
        vec![
            change("encounter", Some("Encounter/e1"), None),
            change("report", Some("DiagnosticReport/r1"), None),
            change("study", Some("ImagingStudy/s1"), None),
            change("report", None, Some("DiagnosticReport/r1")),
            change("study", None, Some("ImagingStudy/s1")),
            change("study", Some("ImagingStudy/s2"), None),
            change("report", Some("DiagnosticReport/r2"), None),
            change("report", None, Some("DiagnosticReport/r2")),
            change("encounter", None, Some("Encounter/e1")),
            change("patient", None, Some("Patient/p1")),
            change("study", None, Some("ImagingStudy/s2")),
        ]
    );
}

fn etf_event(entity_id: &str, status: &str, second: u8, old_atoms: bool) -> Vec<u8> {
    let status = eetf::Term::from(eetf::Binary::from(status.as_bytes()));
    etf_change(
        ("StatusChangeEvent", "Declaration", "status"),
        entity_id,
        status,
        second,
        old_atoms,
    )
}

/// An ESOZ change as the Elixir producers encode it: `(event_type, entity_type, attribute)`,
/// the attribute's new value as a term, the event time's second.
fn etf_change(
    (event_type, entity_type, attribute): (&str, &str, &str),
    entity_id: &str,
    value: eetf::Term,
    second: u8,
    old_atoms: bool,
) -> Vec<u8> {
    use eetf::{Atom, Binary, FixInteger, Map, Term, Tuple};
    let atom = |s: &str| Term::from(Atom::from(s));
    let bin = |s: &str| Term::from(Binary::from(s.as_bytes()));
    let int = |i: i32| Term::from(FixInteger::from(i));
    let time = Map::from([
        (atom("__struct__"), atom("Elixir.NaiveDateTime")),
        (atom("calendar"), atom("Elixir.Calendar.ISO")),
        (atom("year"), int(2024)),
        (atom("month"), int(5)),
        (atom("day"), int(1)),
        (atom("hour"), int(8)),
        (atom("minute"), int(0)),
        (atom("second"), int(i32::from(second))),
        (
            atom("microsecond"),
            Term::from(Tuple::from(vec![int(0), int(0)])),
        ),
    ]);
    let properties = Map::from([(
        bin(attribute),
        Term::from(Map::from([(atom("new_value"), value)])),
    )]);
    let event = Map::from([
        (atom("event_type"), bin(event_type)),
        (atom("entity_type"), bin(entity_type)),
        (atom("entity_id"), bin(entity_id)),
        (atom("properties"), Term::from(properties)),
        (atom("event_time"), Term::from(time)),
        (atom("changed_by"), atom("nil")),
    ]);
    let mut buf = Vec::new();
    Term::from(event).encode(&mut buf).unwrap();
    // eetf writes SMALL_ATOM_UTF8_EXT (119), as OTP >= 26 does; older OTP writes ATOM_EXT (100).
    assert!(buf.contains(&119));
    if old_atoms {
        rewrite_atoms_old(&buf)
    } else {
        buf
    }
}

/// Re-encodes every SMALL_ATOM_UTF8_EXT (tag 119, u8 length) as ATOM_EXT (100, u16 length).
fn rewrite_atoms_old(etf: &[u8]) -> Vec<u8> {
    // Walks the term structure so that atom-like bytes inside binaries are left alone.
    fn walk(input: &[u8], i: &mut usize, out: &mut Vec<u8>) {
        let tag = input[*i];
        *i += 1;
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        match tag {
            119 => {
                let len = input[*i] as usize;
                out.push(100);
                out.extend_from_slice(&(len as u16).to_be_bytes());
                out.extend_from_slice(&input[*i + 1..*i + 1 + len]);
                *i += 1 + len;
            }
            97 => {
                out.extend_from_slice(&input[*i - 1..*i + 1]);
                *i += 1;
            }
            98 => {
                out.extend_from_slice(&input[*i - 1..*i + 4]);
                *i += 4;
            }
            109 => {
                let len = be32(&input[*i..]);
                out.extend_from_slice(&input[*i - 1..*i + 4 + len]);
                *i += 4 + len;
            }
            104 => {
                let arity = input[*i] as usize;
                out.extend_from_slice(&input[*i - 1..*i + 1]);
                *i += 1;
                for _ in 0..arity {
                    walk(input, i, out);
                }
            }
            116 => {
                let arity = be32(&input[*i..]);
                out.extend_from_slice(&input[*i - 1..*i + 4]);
                *i += 4;
                for _ in 0..arity * 2 {
                    walk(input, i, out);
                }
            }
            other => panic!("unexpected tag {other} in test term"),
        }
    }
    let mut out = vec![131];
    let mut i = 1;
    walk(etf, &mut i, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esoz_json_and_erlang_terms_mixed_on_event_manager_topic() {
    let mut e = env().await;
    let t = "event_manager_topic";
    let json_event = |id: &str, status: &str, second: u8| {
        json!({"event_type": "StatusChangeEvent", "entity_type": "Declaration", "entity_id": id,
               "properties": {"status": {"new_value": status}}, "event_time": format!("2024-05-01T08:00:{second:02}Z"), "changed_by": null})
        .to_string()
        .into_bytes()
    };
    let legal_entity = ("StateChangeEvent", "LegalEntity", "is_suspended");
    let suspended = |b: bool| eetf::Term::from(eetf::Atom::from(if b { "true" } else { "false" }));
    e.send(t, &[], &etf_event("d1", "active", 0, true), 0).await; // ETF, ATOM_EXT: first status
    e.send(t, &[], &json_event("d1", "terminated", 1), 1).await; // JSON: change
    e.send(t, &[], &etf_event("d1", "closed", 2, false), 2)
        .await; // ETF, SMALL_ATOM_UTF8: change
    e.send(t, &[], &etf_event("d1", "closed", 2, false), 3)
        .await; // repeat
    e.send(t, &[], &[131, 116, 0, 0, 0], 4).await; // truncated ETF: dead letter
    e.send(t, &[], &json_event("d2", "active", 3), 5).await; // JSON: first status
    e.send(
        t,
        &[],
        &etf_change(legal_entity, "le1", suspended(true), 4, false),
        6,
    )
    .await; // ETF StateChangeEvent: first state
    e.send(
        t,
        &[],
        &etf_change(legal_entity, "le1", suspended(true), 5, false),
        7,
    )
    .await; // repeat
    let state_json = json!({"event_type": "StateChangeEvent", "entity_type": "LegalEntity",
        "entity_id": "le2", "properties": {"is_suspended": {"new_value": false}},
        "event_time": "2024-05-01T08:00:06Z", "changed_by": null});
    e.send(t, &[], state_json.to_string().as_bytes(), 8).await; // JSON StateChangeEvent: first
    let events = e.run().await;
    let event = |event_type: &str, entity_type: &str, id: &str, properties: Value| {
        (
            event_type.to_owned(),
            entity_type.to_owned(),
            id.to_owned(),
            properties,
        )
    };
    let status = |id: &str, new: &str, old: Value| {
        event(
            "StatusChangeEvent",
            "Declaration",
            id,
            change("status", json!(new), old),
        )
    };
    let suspension = |id: &str, new: &str| {
        event(
            "StateChangeEvent",
            "LegalEntity",
            id,
            change("is_suspended", json!(new), Value::Null),
        )
    };
    assert_eq!(
        events,
        vec![
            status("d1", "active", Value::Null),
            status("d1", "terminated", json!("active")),
            status("d1", "closed", json!("terminated")),
            status("d2", "active", Value::Null),
            suspension("le1", "true"),
            suspension("le2", "false"),
        ]
    );
    let times: Vec<chrono::DateTime<Utc>> =
        e.db.client()
            .await
            .query("SELECT event_time FROM events ORDER BY source_offset", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    let at = |second| Utc.with_ymd_and_hms(2024, 5, 1, 8, 0, second).unwrap();
    assert_eq!(times, [at(0), at(1), at(2), at(3), at(4), at(6)]);
}

/// The sample StatusChangeEvent of the ESOZ documentation on an empty EventDB is one event from
/// NULL; the producer sending it again and a replay from the earliest offset add nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_esoz_sample_on_an_empty_eventdb_is_one_event_from_null() {
    let mut e = env().await;
    let t = "event_manager_topic";
    let sample = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/esoz/status_change_sample.json"),
    )
    .unwrap();
    e.send(t, &[], &sample, 0).await;
    let expected = vec![(
        "StatusChangeEvent".to_owned(),
        "EmployeeRequest".to_owned(),
        "df9f70ee-4b12-4740-b0f5-bb5aea116863".to_owned(),
        json!({
            "status": {"new_value": "APPROVED", "old_value": null},
            "employee_id": {"new_value": "e1453f4c-1077-4e85-8c98-c13ffca0063e"},
        }),
    )];
    assert_eq!(e.run().await, expected);

    e.send(t, &[], &sample, 1).await; // sent again by the producer
    assert_eq!(e.run().await, expected);

    e.db.store
        .set_offsets("formats", &[(t.to_owned(), 0, 0)])
        .await
        .unwrap();
    assert_eq!(e.db.stored_offsets_total().await, 0);
    assert_eq!(e.run().await, expected);
}

/// The demo's ESOZ feed: every entity it introduces is stored with its first status as an event
/// from NULL, exactly once, whatever repeats and late messages follow (docs/architecture.md,
/// "The first status of an entity").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_feed_stores_the_first_status_of_every_esoz_entity() {
    use event_manager::demo::feed::{sources_for, Rng};
    use event_manager::formats::Format;
    use std::collections::BTreeSet;

    let mut e = env().await;
    let mut rng = Rng::new(7);
    let mut source = sources_for(&[Format::Esoz])
        .pop()
        .expect("an ESOZ sample source");
    let start = Utc.timestamp_millis_opt(T0).unwrap();
    let mut introduced = BTreeSet::new();
    for i in 0..200 {
        let sample = source.next(&mut rng, start + chrono::Duration::seconds(i));
        let body: Value = serde_json::from_slice(&sample.payload).unwrap();
        if let Some(id) = body["entity_id"].as_str() {
            introduced.insert(id.to_owned());
        }
        e.send(&sample.topic, &[], &sample.payload, i).await;
    }
    assert!(introduced.len() >= 20, "{} entities", introduced.len());

    let mut from_null = BTreeSet::new();
    for (_, _, id, properties) in e.run().await {
        let first = properties
            .as_object()
            .unwrap()
            .values()
            .any(|p| p.get("old_value") == Some(&Value::Null));
        if first {
            assert!(from_null.insert(id.clone()), "{id}: two events from NULL");
        }
    }
    assert_eq!(from_null, introduced);
}
