//! End-to-end pipeline benchmark with its ceilings, measured in one run on the same broker and
//! the same PostgreSQL (README "Performance"):
//!
//! 1. the consume ceiling: a bare consumer reading the same messages, doing nothing;
//! 2. the pipeline: `event-manager run` as a process of its own (so that its peak RSS is its
//!    own), on two workloads —
//!    - **mixed**: all five formats, 10 % of the messages real changes, the rest repeats,
//!      re-deliveries, messages not selected and known states; 6 partitions in all;
//!    - **esoz**: every message a change (first statuses and transitions), one partition, in
//!      the Erlang term format the real producers write;
//! 3. a run rate-limited at half the pipeline's maximum: p50/p99 from a message's broker
//!    timestamp to its offset committed in PostgreSQL;
//! 4. the events API while the pipeline ingests at that half rate, for a minute: 50 keep-alive
//!    HTTP clients in this process list events from the pipeline's own server with a token its
//!    key signed, each request the last hour up to its "now" (to the second, so the window's
//!    last minute is the one being written) with one of [`API_LISTS`]' filters in turn — none,
//!    `event_type`, `entity_type`, `attribute_name`, `attribute_name` + `new_value`, two
//!    filters, page 3 of 100 — after a second's warm-up: p50/p99/max latency, requests/s, the
//!    messages stored per second meanwhile and the consume-to-commit p99 of those sent
//!    meanwhile;
//! 5. the write ceiling: binary COPY of the event rows the pipeline stored into a fresh database
//!    with the real schema (indexes, the default settings' attribute indexes and count
//!    triggers), in transactions of one batch's size.
//!
//! Prints two tables (the pipeline; the API under ingestion) and writes
//! `target/bench/pipeline.json`: per workload the pipeline's figures and, from step 4,
//! `api_clients`, `api_ingest_rate_per_s`, `api_requests_per_s`, `api_list_p50_ms`,
//! `api_list_p99_ms`, `api_list_max_ms`, `api_list_p99_ms_by_filter`, `api_errors`,
//! `api_p99_commit_latency_ms` and `api_peak_rss_mib` (`peak_rss_mib` is read before step 4).
//!
//! `cargo bench --bench pipeline`. Environment:
//! - `EM_BENCH_BOOTSTRAP`: a real Kafka broker (`host:port`, PLAINTEXT); else the in-process
//!   MockCluster, which keeps only the newest ~5 MiB per partition, so the messages are produced
//!   while they are consumed (in every phase alike), by a producer that has delivered a message
//!   before the phase's clock starts (its own start-up is not the phase's);
//! - `DATABASE_URL`: an existing PostgreSQL server, else a private one is started;
//! - `EM_BENCH_MIXED_MESSAGES` (default 200 000), `EM_BENCH_ESOZ_MESSAGES` (default 100 000),
//!   `EM_BENCH_LATENCY_SECS` (default 20), `EM_BENCH_WORKLOADS` (default `mixed,esoz`);
//! - `EM_BENCH_API_CLIENTS` (default 50): the API run's clients; `0` leaves the run out;
//! - `EM_BENCH_API_WINDOWS` (default `second`): the end of a request's window, to the `second` as
//!   a client asking for the last hour sends it, or to the `microsecond`, so that no two
//!   requests are the same query and none is answered by another's (the server runs identical
//!   list queries that wait at once only once: README "Performance");
//! - `EM_BENCH_API_SECS` (default 60): the API run's length; a whole minute, since what a
//!   window's total costs depends on where in its last minute the window ends;
//! - `EM_BENCH_BIN`: the `event-manager` binary to run as the pipeline (default: this build's),
//!   e.g. a copy built before a change, to compare both in one session;
//! - `EM_BENCH_WRITE_VARIANTS=1`: the write ceiling also without the count triggers, with the
//!   GIN index on `properties` that `run` builds where lists may span more than a day (sql/V16),
//!   and without the value index of `status` that it builds by default (`api.indexed_values`);
//! - `EM_PIPELINE__…`, `EM_DATABASE__…`: passed to the pipeline process (batch size 2000 and
//!   linger 50 ms unless set). On the MockCluster the pipeline's consumer gets
//!   `fetch.wait.max.ms` 10, as the bare consumer (see `MOCK_FETCH_WAIT_MS`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Timelike, Utc};
use event_manager::api::auth::mint_token;
use event_manager::broker::EmbeddedBroker;
use event_manager::config::AuthConfig;
use event_manager::demo::feed::Rng;
use event_manager::store::{DatabaseConfig, EventStore, LocalPostgres};
use futures::pin_mut;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::json;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

#[path = "common/http_load.rs"]
mod http_load;

/// As the service (src/main.rs): measured with the allocator it runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BIN: &str = env!("CARGO_BIN_EXE_event-manager");

/// Messages in flight per partition on the MockCluster (it keeps ~5 MiB per partition).
const MOCK_WINDOW_PER_PARTITION: u64 = 6_000;

/// Event time between two generated messages (the API run's messages follow the clock instead).
const EVENT_TIME_STEP: chrono::Duration = chrono::Duration::microseconds(500);

/// Rows per COPY transaction of the write ceiling (the pipeline's default batch size).
const COPY_BATCH: usize = 1_000;

/// `fetch.wait.max.ms` of every consumer on the MockCluster (the bare consumer and the pipeline).
/// The MockCluster holds a fetch that finds no data for the whole wait, even when messages arrive
/// meanwhile (librdkafka's rdkafka_mock_handlers.c, "delay up to MaxWait"); a real broker answers
/// as soon as `fetch.min.bytes` arrived. With librdkafka's default of 500 ms a consumer that has
/// caught up would wait half a second for every next message, so the pipeline's latency would
/// measure the mock.
const MOCK_FETCH_WAIT_MS: &str = "10";

/// How often the stored offsets are read for progress and latency.
const OFFSET_POLL: Duration = Duration::from_millis(5);

/// The pipeline's token key (`auth.hs256_secret`): the API run's clients send tokens signed
/// with it, as a deployment's clients do.
const TOKEN_KEY: &str = "bench-token-key-bench-token-key-bench";

/// The list requests of the API run, taken in turn: a label and the filters after the window
/// (the last hour). The values are the workloads' own (both have ESOZ events).
const API_LISTS: &[(&str, &str)] = &[
    ("last hour", ""),
    ("+ event_type", "&event_type=StatusChangeEvent"),
    ("+ entity_type", "&entity_type=EmployeeRequest"),
    ("+ attribute_name", "&attribute_name=status"),
    (
        "+ attribute_name&new_value",
        "&attribute_name=status&new_value=APPROVED",
    ),
    (
        "+ entity_type&attribute_name",
        "&entity_type=EmployeeRequest&attribute_name=employee_id",
    ),
    ("page 3 of 100", "&page=3&page_size=100"),
];

// ---------------------------------------------------------------------------------------------
// Messages

/// One message to produce.
#[derive(Clone)]
struct Msg {
    /// Index into the workload's topics.
    topic: usize,
    partition: i32,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    /// Events the pipeline should store for it.
    events: u32,
}

/// What a message of the mixed workload is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Change,
    Repeat,
    Redelivery,
    NotSelected,
    KnownState,
}

impl Class {
    fn pick(rng: &mut Rng) -> Self {
        match rng.below(100) {
            0..=9 => Class::Change,
            10..=34 => Class::Repeat,
            35..=54 => Class::Redelivery,
            55..=79 => Class::NotSelected,
            _ => Class::KnownState,
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A workload: its topics (name suffix, partitions, rule) and its message source.
struct Workload {
    name: &'static str,
    /// (suffix, partitions, topic rule with `{topic}` and `{dlq}` placeholders).
    topics: Vec<(&'static str, i32, &'static str)>,
    source: Box<dyn Source>,
}

trait Source: Send {
    fn next(&mut self, rng: &mut Rng, now: DateTime<Utc>) -> Msg;
}

/// The Erlang External Term Format the ESOZ services write (`:erlang.term_to_binary/1`, OTP ≥ 26
/// atoms), for one StatusChangeEvent.
fn esoz_etf(
    entity_type: &str,
    entity_id: &str,
    properties: &[(&str, &str)],
    time: DateTime<Utc>,
    changed_by: &str,
) -> Vec<u8> {
    fn atom(out: &mut Vec<u8>, a: &str) {
        out.extend_from_slice(&[119, a.len() as u8]);
        out.extend_from_slice(a.as_bytes());
    }
    fn bin(out: &mut Vec<u8>, b: &str) {
        out.push(109);
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b.as_bytes());
    }
    fn map(out: &mut Vec<u8>, n: u32) {
        out.push(116);
        out.extend_from_slice(&n.to_be_bytes());
    }
    fn int(out: &mut Vec<u8>, v: i32) {
        if (0..=255).contains(&v) {
            out.extend_from_slice(&[97, v as u8]);
        } else {
            out.push(98);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    let mut out = Vec::with_capacity(400);
    out.push(131);
    map(&mut out, 6);
    atom(&mut out, "event_type");
    bin(&mut out, "StatusChangeEvent");
    atom(&mut out, "entity_type");
    bin(&mut out, entity_type);
    atom(&mut out, "entity_id");
    bin(&mut out, entity_id);
    atom(&mut out, "properties");
    map(&mut out, properties.len() as u32);
    for (name, value) in properties {
        bin(&mut out, name);
        map(&mut out, 1);
        atom(&mut out, "new_value");
        bin(&mut out, value);
    }
    atom(&mut out, "event_time");
    map(&mut out, 9);
    atom(&mut out, "__struct__");
    atom(&mut out, "Elixir.NaiveDateTime");
    atom(&mut out, "calendar");
    atom(&mut out, "Elixir.Calendar.ISO");
    for (name, value) in [
        ("year", time.year()),
        ("month", time.month() as i32),
        ("day", time.day() as i32),
        ("hour", time.hour() as i32),
        ("minute", time.minute() as i32),
        ("second", time.second() as i32),
    ] {
        atom(&mut out, name);
        int(&mut out, value);
    }
    atom(&mut out, "microsecond");
    out.extend_from_slice(&[104, 2]);
    int(&mut out, (time.timestamp_subsec_micros()) as i32);
    int(&mut out, 6);
    atom(&mut out, "changed_by");
    bin(&mut out, changed_by);
    out
}

const ESOZ_TYPES: &[(&str, &[&str])] = &[
    (
        "EmployeeRequest",
        &["NEW", "APPROVED", "REJECTED", "EXPIRED"],
    ),
    (
        "Declaration",
        &["pending_verification", "active", "terminated", "closed"],
    ),
    ("MedicationRequest", &["ACTIVE", "COMPLETED", "REJECTED"]),
    ("Episode", &["active", "closed", "entered_in_error"]),
];

struct EsozEntity {
    kind: usize,
    id: String,
    status: usize,
    employee: String,
    last: Vec<u8>,
}

/// ESOZ entities: first statuses, transitions, repeats and re-deliveries.
#[derive(Default)]
struct Esoz {
    entities: Vec<EsozEntity>,
    topic: usize,
    partitions: i32,
    /// Share of changes that are an entity's first status (percent).
    new_share: usize,
}

impl Esoz {
    fn message(&mut self, i: usize, rng: &mut Rng, time: DateTime<Utc>, events: u32) -> Msg {
        let e = &mut self.entities[i];
        let (entity_type, statuses) = ESOZ_TYPES[e.kind];
        let changed_by = rng.uuid();
        let mut props = vec![("status", statuses[e.status])];
        if e.kind == 0 {
            props.push(("employee_id", e.employee.as_str()));
        }
        let payload = esoz_etf(entity_type, &e.id, &props, time, &changed_by);
        e.last = payload.clone();
        Msg {
            topic: self.topic,
            partition: (fnv(e.id.as_bytes()) % self.partitions as u64) as i32,
            key: e.id.as_bytes().to_vec(),
            payload,
            headers: Vec::new(),
            events,
        }
    }

    fn change(&mut self, rng: &mut Rng, now: DateTime<Utc>) -> Msg {
        if self.entities.len() < 100 || rng.below(100) < self.new_share {
            let kind = rng.below(ESOZ_TYPES.len());
            let e = EsozEntity {
                kind,
                id: rng.uuid(),
                status: rng.below(ESOZ_TYPES[kind].1.len()),
                employee: rng.uuid(),
                last: Vec::new(),
            };
            if self.entities.len() >= 20_000 {
                let i = rng.below(self.entities.len());
                self.entities.swap_remove(i);
            }
            self.entities.push(e);
            let i = self.entities.len() - 1;
            return self.message(i, rng, now, 1);
        }
        let i = rng.below(self.entities.len());
        let n = ESOZ_TYPES[self.entities[i].kind].1.len();
        let e = &mut self.entities[i];
        e.status = (e.status + 1 + rng.below(n - 1)) % n;
        self.message(i, rng, now, 1)
    }
}

impl Source for Esoz {
    fn next(&mut self, rng: &mut Rng, now: DateTime<Utc>) -> Msg {
        self.change(rng, now)
    }
}

impl Esoz {
    fn mixed(&mut self, class: Class, rng: &mut Rng, now: DateTime<Utc>) -> Msg {
        if class == Class::Change || self.entities.is_empty() {
            return self.change(rng, now);
        }
        let i = rng.below(self.entities.len());
        match class {
            Class::Redelivery if !self.entities[i].last.is_empty() => {
                let e = &self.entities[i];
                Msg {
                    topic: self.topic,
                    partition: (fnv(e.id.as_bytes()) % self.partitions as u64) as i32,
                    key: e.id.as_bytes().to_vec(),
                    payload: e.last.clone(),
                    headers: Vec::new(),
                    events: 0,
                }
            }
            // ESOZ has no selector and no baseline: the same status again, later.
            _ => self.message(i, rng, now, 0),
        }
    }
}

/// Danish eHealth status context events of care plans.
#[derive(Default)]
struct Dk {
    /// (reference, status, version, last message)
    resources: Vec<(String, usize, i64, Option<Msg>)>,
    topic: usize,
    partitions: i32,
}

const DK_STATUSES: &[&str] = &["draft", "active", "on-hold", "completed", "revoked"];

impl Dk {
    fn message(&self, reference: &str, kind: &str, status: &str, version: i64, events: u32) -> Msg {
        let body = json!({
            "messageType": kind,
            "messageVersion": "1.0",
            "eventType": if version == 1 { "created" } else { "updated" },
            "resourceReference": reference,
            "resourceVersion": version.to_string(),
            "context": "status",
            "status": status,
        });
        Msg {
            topic: self.topic,
            partition: (fnv(reference.as_bytes()) % self.partitions as u64) as i32,
            key: reference.as_bytes().to_vec(),
            payload: body.to_string().into_bytes(),
            headers: vec![
                ("messageType", kind.to_owned()),
                ("resourceProfile", "ehealth-careplan".to_owned()),
                ("resourceReference", reference.to_owned()),
                ("resourceVersion", version.to_string()),
            ],
            events,
        }
    }

    fn mixed(&mut self, class: Class, rng: &mut Rng) -> Msg {
        if class == Class::KnownState || self.resources.is_empty() {
            // A created resource: its first status is a baseline.
            let reference = format!(
                "https://careplan.ehealth.example.dk/fhir/CarePlan/{}",
                rng.uuid()
            );
            let m = self.message(&reference, "EHealthContextEvent", DK_STATUSES[0], 1, 0);
            if self.resources.len() >= 5_000 {
                self.resources.swap_remove(rng.below(5_000));
            }
            self.resources.push((reference, 0, 1, Some(m.clone())));
            return m;
        }
        let i = rng.below(self.resources.len());
        let (reference, status, version, last) = self.resources[i].clone();
        let m = match class {
            Class::Change => {
                let next = (status + 1 + rng.below(DK_STATUSES.len() - 1)) % DK_STATUSES.len();
                self.resources[i].1 = next;
                self.resources[i].2 = version + 1;
                self.message(
                    &reference,
                    "EHealthContextEvent",
                    DK_STATUSES[next],
                    version + 1,
                    1,
                )
            }
            Class::Repeat => {
                self.resources[i].2 = version + 1;
                self.message(
                    &reference,
                    "EHealthContextEvent",
                    DK_STATUSES[status],
                    version + 1,
                    0,
                )
            }
            Class::Redelivery => {
                return last.unwrap_or_else(|| {
                    self.message(&reference, "EHealthSimpleEvent", "x", version, 0)
                })
            }
            _ => self.message(
                &reference,
                "EHealthSimpleEvent",
                DK_STATUSES[status],
                version,
                0,
            ),
        };
        self.resources[i].3 = Some(m.clone());
        m
    }
}

/// RCP v2 envelopes: patient calls finished (changes), timeslots created (baselines) and
/// created again, other groups (not selected).
#[derive(Default)]
struct Rcp {
    /// (timeslot uid, last message)
    timeslots: Vec<(String, Msg)>,
    topic: usize,
    partitions: i32,
}

impl Rcp {
    /// `head`: the envelope's group, resource and type.
    fn message(
        &self,
        [group, resource, kind]: [&str; 3],
        target: &str,
        data: serde_json::Value,
        now: DateTime<Utc>,
        rng: &mut Rng,
        events: u32,
    ) -> Msg {
        let body = json!({
            "group": group,
            "namespace": "",
            "uid": rng.uuid(),
            "date": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "resource": resource,
            "type": kind,
            "target": target,
            "data": data,
            "metadata": {"trace_id": rng.uuid()},
        });
        Msg {
            topic: self.topic,
            partition: (fnv(target.as_bytes()) % self.partitions as u64) as i32,
            key: target.as_bytes().to_vec(),
            payload: body.to_string().into_bytes(),
            headers: Vec::new(),
            events,
        }
    }

    fn mixed(&mut self, class: Class, rng: &mut Rng, now: DateTime<Utc>) -> Msg {
        let created = |rng: &mut Rng| json!({"spec": {"type": "call", "user_uid": rng.uuid(), "patient_uid": rng.uuid(), "duration_secs": "900"}});
        match class {
            Class::Change => {
                let call = rng.uuid();
                let data = json!({"status": "finished", "patient_uid": rng.uuid(), "user_uid": rng.uuid(), "duration_secs": "300"});
                self.message(
                    ["rcp-v2", "patient_calls", "updated"],
                    &call,
                    data,
                    now,
                    rng,
                    1,
                )
            }
            Class::NotSelected => {
                let target = rng.uuid();
                let data = created(rng);
                self.message(
                    ["other", "timeslots", "created"],
                    &target,
                    data,
                    now,
                    rng,
                    0,
                )
            }
            Class::Redelivery if !self.timeslots.is_empty() => {
                self.timeslots[rng.below(self.timeslots.len())].1.clone()
            }
            Class::Repeat if !self.timeslots.is_empty() => {
                let i = rng.below(self.timeslots.len());
                let target = self.timeslots[i].0.clone();
                let data = created(rng);
                let m = self.message(
                    ["rcp-v2", "timeslots", "created"],
                    &target,
                    data,
                    now,
                    rng,
                    0,
                );
                self.timeslots[i].1 = m.clone();
                m
            }
            _ => {
                let target = rng.uuid();
                let data = created(rng);
                let m = self.message(
                    ["rcp-v2", "timeslots", "created"],
                    &target,
                    data,
                    now,
                    rng,
                    0,
                );
                if self.timeslots.len() >= 5_000 {
                    self.timeslots.swap_remove(rng.below(5_000));
                }
                self.timeslots.push((target, m.clone()));
                m
            }
        }
    }
}

/// Smart Flow Sheet events as the bridge produces them: discharges of new hospitalizations
/// (changes), the same discharge again, types SFS does not document (ignored).
#[derive(Default)]
struct Sfs {
    discharged: Vec<Msg>,
    topic: usize,
    partitions: i32,
}

impl Sfs {
    fn mixed(&mut self, class: Class, rng: &mut Rng) -> Msg {
        let message = |body: serde_json::Value, key: &str, events| Msg {
            topic: self.topic,
            partition: (fnv(key.as_bytes()) % self.partitions as u64) as i32,
            key: key.as_bytes().to_vec(),
            payload: body.to_string().into_bytes(),
            headers: Vec::new(),
            events,
        };
        match class {
            Class::NotSelected => {
                let id = rng.uuid();
                message(
                    json!({"eventType": "flowsheet.report_ready", "object": {"id": id}}),
                    &id,
                    0,
                )
            }
            Class::Change | Class::KnownState => {
                let id = format!("emr-h-{}", rng.uuid());
                let m = message(
                    json!({"eventType": "hospitalization.discharged", "clinicId": "clinic-1", "object": {"objectType": "hospitalization", "id": rng.uuid(), "hospitalizationId": id}}),
                    &id,
                    u32::from(class == Class::Change),
                );
                if class == Class::Change {
                    if self.discharged.len() >= 5_000 {
                        self.discharged.swap_remove(rng.below(5_000));
                    }
                    self.discharged.push(m.clone());
                    m
                } else if let Some(done) = self.discharged.first() {
                    // A known state: a discharge already stored, sent again.
                    done.clone()
                } else {
                    Msg { events: 1, ..m }
                }
            }
            _ if !self.discharged.is_empty() => {
                self.discharged[rng.below(self.discharged.len())].clone()
            }
            _ => {
                let id = rng.uuid();
                message(
                    json!({"eventType": "flowsheet.report_ready", "object": {"id": id}}),
                    &id,
                    0,
                )
            }
        }
    }
}

/// FHIRcast sessions switching patients: a session's first open is its baseline.
#[derive(Default)]
struct Fhircast {
    /// (hub.topic, open patient, last message)
    sessions: Vec<(String, Option<u64>, Option<Msg>)>,
    next_patient: u64,
    topic: usize,
    partitions: i32,
}

impl Fhircast {
    fn message(
        &self,
        topic: &str,
        event: &str,
        context: serde_json::Value,
        now: DateTime<Utc>,
        rng: &mut Rng,
        events: u32,
    ) -> Msg {
        Msg {
            topic: self.topic,
            partition: (fnv(topic.as_bytes()) % self.partitions as u64) as i32,
            key: topic.as_bytes().to_vec(),
            payload: json!({"timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), "id": rng.uuid(), "event": {"hub.topic": topic, "hub.event": event, "context": context}})
                .to_string()
                .into_bytes(),
            headers: Vec::new(),
            events,
        }
    }

    fn open(
        &mut self,
        i: usize,
        patient: u64,
        now: DateTime<Utc>,
        rng: &mut Rng,
        events: u32,
    ) -> Msg {
        let topic = self.sessions[i].0.clone();
        let context = json!([{"key": "patient", "resource": {"resourceType": "Patient", "id": format!("p{patient}")}}]);
        let m = self.message(&topic, "Patient-open", context, now, rng, events);
        self.sessions[i].1 = Some(patient);
        self.sessions[i].2 = Some(m.clone());
        m
    }

    fn mixed(&mut self, class: Class, rng: &mut Rng, now: DateTime<Utc>) -> Msg {
        if class == Class::KnownState || self.sessions.is_empty() {
            if self.sessions.len() >= 2_000 {
                self.sessions.swap_remove(rng.below(2_000));
            }
            self.sessions.push((rng.uuid(), None, None));
            let i = self.sessions.len() - 1;
            self.next_patient += 1;
            return self.open(i, self.next_patient, now, rng, 0);
        }
        let i = rng.below(self.sessions.len());
        let patient = self.sessions[i].1.unwrap_or(0);
        match class {
            Class::Change => {
                self.next_patient += 1;
                self.open(i, self.next_patient, now, rng, 1)
            }
            Class::Repeat => self.open(i, patient, now, rng, 0),
            Class::Redelivery => match &self.sessions[i].2 {
                Some(m) => m.clone(),
                None => self.open(i, patient, now, rng, 0),
            },
            _ => {
                let topic = self.sessions[i].0.clone();
                let context = json!([{"key": "report", "resource": {"resourceType": "DiagnosticReport", "id": "r1"}}]);
                self.message(&topic, "DiagnosticReport-update", context, now, rng, 0)
            }
        }
    }
}

/// All five formats, one class drawn per message.
struct Mixed {
    esoz: Esoz,
    dk: Dk,
    rcp: Rcp,
    sfs: Sfs,
    fhircast: Fhircast,
}

impl Source for Mixed {
    fn next(&mut self, rng: &mut Rng, now: DateTime<Utc>) -> Msg {
        let class = Class::pick(rng);
        match rng.below(5) {
            0 => self.esoz.mixed(class, rng, now),
            1 => self.dk.mixed(class, rng),
            2 => self.rcp.mixed(class, rng, now),
            3 => self.sfs.mixed(class, rng),
            _ => self.fhircast.mixed(class, rng, now),
        }
    }
}

const ESOZ_RULE: &str = "[[topic]]\nname = \"{topic}\"\nformat = \"esoz\"\ndead_letter_topic = \"{dlq}\"\ncapture = [\"employee_id\"]\n";
const DK_RULE: &str = "[[topic]]\nname = \"{topic}\"\nformat = \"ehealth-dk\"\ndead_letter_topic = \"{dlq}\"\nselector = \"messageType = 'EHealthContextEvent'\"\n[topic.options]\ncontexts = [\"status\"]\n[topic.options.entity_types]\nehealth-careplan = \"CarePlan\"\n";
const RCP_RULE: &str = "[[topic]]\nname = \"{topic}\"\nformat = \"rcp-v2\"\ndead_letter_topic = \"{dlq}\"\nselector = \"group = 'rcp-v2'\"\n[topic.options]\nlifecycle = [\"timeslots\"]\nstatus = [\"patient_calls\"]\n";
const SFS_RULE: &str =
    "[[topic]]\nname = \"{topic}\"\nformat = \"sfs\"\ndead_letter_topic = \"{dlq}\"\n";
const FHIRCAST_RULE: &str =
    "[[topic]]\nname = \"{topic}\"\nformat = \"fhircast\"\ndead_letter_topic = \"{dlq}\"\n";

fn mixed() -> Workload {
    Workload {
        name: "mixed",
        topics: vec![
            ("esoz", 2, ESOZ_RULE),
            ("dk.status", 1, DK_RULE),
            ("rcp", 1, RCP_RULE),
            ("sfs", 1, SFS_RULE),
            ("fhircast", 1, FHIRCAST_RULE),
        ],
        source: Box::new(Mixed {
            esoz: Esoz {
                topic: 0,
                partitions: 2,
                new_share: 30,
                ..Esoz::default()
            },
            dk: Dk {
                topic: 1,
                partitions: 1,
                ..Dk::default()
            },
            rcp: Rcp {
                topic: 2,
                partitions: 1,
                ..Rcp::default()
            },
            sfs: Sfs {
                topic: 3,
                partitions: 1,
                ..Sfs::default()
            },
            fhircast: Fhircast {
                topic: 4,
                partitions: 1,
                ..Fhircast::default()
            },
        }),
    }
}

fn esoz() -> Workload {
    Workload {
        name: "esoz",
        topics: vec![("esoz", 1, ESOZ_RULE)],
        source: Box::new(Esoz {
            topic: 0,
            partitions: 1,
            new_share: 30,
            ..Esoz::default()
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Broker

enum Broker {
    Mock(EmbeddedBroker),
    Real(String),
}

impl Broker {
    fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(b) => b.bootstrap_servers(),
            Broker::Real(b) => b.clone(),
        }
    }

    fn window(&self, partitions: u64) -> u64 {
        match self {
            Broker::Mock(_) => MOCK_WINDOW_PER_PARTITION * partitions,
            Broker::Real(_) => u64::MAX,
        }
    }

    async fn create_topic(&self, name: &str, partitions: i32) {
        match self {
            Broker::Mock(b) => b.create_topic(name, partitions).unwrap(),
            Broker::Real(bootstrap) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", bootstrap)
                    .create()
                    .unwrap();
                let results = admin
                    .create_topics(
                        &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                    )
                    .await
                    .unwrap();
                for r in results {
                    r.unwrap();
                }
            }
        }
    }
}

/// The topics of one phase of a workload: fresh names, so that every phase reads from offset 0.
struct Topics {
    names: Vec<String>,
    partitions: Vec<i32>,
    rules: tempfile::TempDir,
}

impl Topics {
    async fn create(broker: &Broker, workload: &Workload, phase: &str) -> Self {
        let run = uuid::Uuid::now_v7().simple().to_string();
        let rules = tempfile::tempdir().unwrap();
        let mut names = Vec::new();
        let mut partitions = Vec::new();
        for (suffix, n, rule) in &workload.topics {
            let name = format!("bench-{}-{phase}-{}.{suffix}", &run[20..], workload.name);
            let dlq = format!("{name}.dlq");
            broker.create_topic(&name, *n).await;
            broker.create_topic(&dlq, 1).await;
            let file = rules
                .path()
                .join(format!("{}.toml", suffix.replace('.', "-")));
            std::fs::write(file, rule.replace("{topic}", &name).replace("{dlq}", &dlq)).unwrap();
            names.push(name);
            partitions.push(*n);
        }
        Self {
            names,
            partitions,
            rules,
        }
    }

    fn total_partitions(&self) -> u64 {
        self.partitions.iter().map(|&p| p as u64).sum()
    }
}

/// Where the bench's producer's messages landed, written down by its delivery callback: a
/// message's index in its `produce` call, its partition and offset. A `FutureProducer` would
/// complete a future per message and wake the task awaiting it, about a sixth of the bench
/// process's CPU, which the pipeline and PostgreSQL share the two cores with.
#[derive(Default)]
struct Landed {
    at: std::sync::Mutex<Vec<(usize, i32, i64)>>,
    /// The first delivery that failed (no panic across librdkafka's callback).
    failed: std::sync::Mutex<Option<String>>,
    count: AtomicU64,
}

impl ClientContext for Landed {}

impl ProducerContext for Landed {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        match result {
            Ok(m) => self
                .at
                .lock()
                .unwrap()
                .push((index, m.partition(), m.offset())),
            Err((e, _)) => {
                self.failed.lock().unwrap().get_or_insert(e.to_string());
            }
        }
        self.count.fetch_add(1, Ordering::Release);
    }
}

type BenchProducer = ThreadedProducer<Landed>;

/// The bench's producer, connected: it has delivered one message (on a topic of its own) before
/// it is returned, so that no phase's clock counts its start-up. An idempotent producer's first
/// delivery waits for its producer id and the broker's metadata: about half a second on the
/// MockCluster, a sixth of a default mixed run.
async fn producer(broker: &Broker) -> BenchProducer {
    let producer: BenchProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "true")
        .create_with_context(Landed::default())
        .unwrap();
    let topic = format!("bench-warm-up-{}", uuid::Uuid::now_v7().simple());
    broker.create_topic(&topic, 1).await;
    producer
        .send(BaseRecord::<(), str, usize>::with_opaque_to(&topic, 0).payload("warm-up"))
        .map_err(|(e, _)| e)
        .unwrap();
    landed(&producer, 1).await;
    producer
}

/// Waits until `n` messages sent since the last call have landed; returns where, by index.
async fn landed(producer: &BenchProducer, n: usize) -> Vec<(usize, i32, i64)> {
    let context = producer.context();
    let deadline = Instant::now() + Duration::from_secs(60);
    while context.count.load(Ordering::Acquire) < n as u64 {
        assert!(
            Instant::now() < deadline,
            "the bench's producer delivers within a minute"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Some(e) = context.failed.lock().unwrap().take() {
        panic!("produce: {e}");
    }
    context.count.store(0, Ordering::Release);
    let mut at = std::mem::take(&mut *context.at.lock().unwrap());
    at.sort_unstable_by_key(|(i, _, _)| *i);
    at
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where a produced message landed, and when.
struct Sent {
    topic: usize,
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
}

/// Sends `messages` in order, keeping at most `window` unconsumed (as `consumed` counts them);
/// `rate` limits messages per second. Returns where each landed.
async fn produce<'m>(
    producer: &BenchProducer,
    topics: &Topics,
    messages: impl Iterator<Item = &'m Msg>,
    window: u64,
    consumed: &AtomicU64,
    rate: Option<f64>,
) -> Vec<Sent> {
    let started = Instant::now();
    // Each message's topic and timestamp, by its index.
    let mut sending: Vec<(usize, i64)> = Vec::new();
    let mut produced = 0u64;
    let mut messages = messages.peekable();
    while messages.peek().is_some() {
        while produced.saturating_sub(consumed.load(Ordering::Relaxed)) > window {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let chunk = match rate {
            Some(rate) => {
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                if due <= produced {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                due - produced
            }
            None => 1000,
        };
        for m in messages.by_ref().take(chunk as usize) {
            let timestamp_ms = now_ms();
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (k, v) in &m.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record = BaseRecord::with_opaque_to(&topics.names[m.topic], sending.len())
                .partition(m.partition)
                .key(&m.key)
                .payload(&m.payload)
                .headers(headers)
                .timestamp(timestamp_ms);
            // Enqueued now (librdkafka batches and sends in the background).
            while let Err((e, back)) = producer.send(record) {
                assert!(
                    matches!(
                        e,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ),
                    "produce: {e}"
                );
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sending.push((m.topic, timestamp_ms));
            produced += 1;
        }
    }
    landed(producer, sending.len())
        .await
        .into_iter()
        .map(|(i, partition, offset)| Sent {
            topic: sending[i].0,
            partition,
            offset,
            timestamp_ms: sending[i].1,
        })
        .collect()
}

/// `n` messages of the workload, their event times `step` apart after `clock`. A message sent
/// again byte for byte (a re-delivery, a known state) means no new event, whatever the copy
/// says: the sources clone the message they resend, its `events` too.
fn generate(
    workload: &mut Workload,
    n: u64,
    rng: &mut Rng,
    clock: &mut DateTime<Utc>,
    step: chrono::Duration,
) -> Vec<Msg> {
    let mut sent = std::collections::HashSet::new();
    (0..n)
        .map(|_| {
            *clock += step;
            let mut m = workload.source.next(rng, *clock);
            if !sent.insert((m.topic, fnv(&m.key), fnv(&m.payload))) {
                m.events = 0;
            }
            m
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Phases

/// Messages per second a bare consumer reads the messages at, produced as in the pipeline run.
async fn consume_ceiling(broker: &Broker, workload: &Workload, messages: &[Msg]) -> f64 {
    let topics = Topics::create(broker, workload, "bare").await;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", MOCK_FETCH_WAIT_MS)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (name, &n) in topics.names.iter().zip(&topics.partitions) {
        for p in 0..n {
            tpl.add_partition_offset(name, p, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();
    let consumed = Arc::new(AtomicU64::new(0));
    let total = messages.len() as u64;
    let reader = {
        let consumed = consumed.clone();
        std::thread::spawn(move || {
            while consumed.load(Ordering::Relaxed) < total {
                if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let producer = producer(broker).await;
    let started = Instant::now();
    produce(
        &producer,
        &topics,
        messages.iter(),
        broker.window(topics.total_partitions()),
        &consumed,
        None,
    )
    .await;
    tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    total as f64 / started.elapsed().as_secs_f64()
}

/// `event-manager run`, killed when dropped.
struct Pipeline {
    child: Child,
    http: u16,
    /// Its configuration file, when the broker needs one.
    _config: Option<tempfile::NamedTempFile>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pipeline {
    fn start(topics: &Topics, broker: &Broker, database_url: &str, log: PathBuf) -> Self {
        let bootstrap = broker.bootstrap();
        let http = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = std::env::var_os("EM_BENCH_BIN").unwrap_or_else(|| BIN.into());
        let mut command = Command::new(bin);
        command
            .arg("run")
            .env("EM_PIPELINE__TOPICS_DIR", topics.rules.path())
            .env("EM_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
            .env(
                "EM_KAFKA__GROUP_ID",
                format!("bench-{}", uuid::Uuid::now_v7().simple()),
            )
            .env("EM_HTTP__BIND", format!("127.0.0.1:{http}"))
            .env("DATABASE_URL", database_url)
            .env("EM_LOG__LEVEL", "warn")
            .env("EM_AUTH__HS256_SECRET", TOKEN_KEY)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        // The bench's own settings are no configuration keys: `run` would refuse them.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EM_BENCH_") {
                command.env_remove(key);
            }
        }
        // On the MockCluster the pipeline's consumer waits for fetches as the bare consumer does
        // (see MOCK_FETCH_WAIT_MS); against a real broker it runs with its own settings.
        let config = matches!(broker, Broker::Mock(_)).then(|| {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(
                &mut file,
                format!("[kafka.properties]\n\"fetch.wait.max.ms\" = \"{MOCK_FETCH_WAIT_MS}\"\n")
                    .as_bytes(),
            )
            .unwrap();
            command.env("EM_CONFIG", file.path());
            file
        });
        for (key, default) in [
            ("EM_PIPELINE__BATCH_SIZE", "2000"),
            ("EM_PIPELINE__BATCH_LINGER", "50ms"),
        ] {
            if std::env::var_os(key).is_none() {
                command.env(key, default);
            }
        }
        Self {
            child: command.spawn().expect("spawn event-manager run"),
            http,
            _config: config,
        }
    }

    async fn ready(&mut self) {
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/readyz", self.http);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("event-manager run exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "event-manager run not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }
}

/// Per partition, each stored next offset and when it was first read (ms since the epoch).
type History = HashMap<(String, i32), Vec<(i64, i64)>>;

/// The stored offsets of the pipeline's database, read every [`OFFSET_POLL`]: their sum (for
/// flow control and progress) and, per partition, when each next offset was first seen.
struct OffsetWatch {
    stored: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    task: tokio::task::JoinHandle<()>,
}

impl OffsetWatch {
    async fn start(database_url: &str) -> Self {
        let (client, conn) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let stored = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let history: Arc<Mutex<History>> = Arc::default();
        let task = {
            let (stored, stop, history) = (stored.clone(), stop.clone(), history.clone());
            tokio::spawn(async move {
                let stmt = client
                    .prepare("SELECT topic, partition, next_offset FROM consumer_offsets")
                    .await
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let at = now_ms();
                    if let Ok(rows) = client.query(&stmt, &[]).await {
                        let mut sum = 0u64;
                        let mut history = history.lock().unwrap();
                        for row in rows {
                            let next: i64 = row.get(2);
                            sum += next as u64;
                            let seen = history.entry((row.get(0), row.get(1))).or_default();
                            if seen.last().is_none_or(|(o, _)| *o < next) {
                                seen.push((next, at));
                            }
                        }
                        stored.store(sum, Ordering::Relaxed);
                    }
                    tokio::time::sleep(OFFSET_POLL).await;
                }
            })
        };
        Self {
            stored,
            stop,
            history,
            task,
        }
    }

    async fn wait_for(&self, n: u64) {
        while self.stored.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Milliseconds from each message's timestamp to the first read that found it committed.
    fn latencies(&self, topics: &Topics, sent: &[Sent]) -> Vec<i64> {
        let history = self.history.lock().unwrap();
        let mut out: Vec<i64> = sent
            .iter()
            .filter_map(|s| {
                let seen = history.get(&(topics.names[s.topic].clone(), s.partition))?;
                let i = seen.partition_point(|(next, _)| *next <= s.offset);
                seen.get(i).map(|(_, at)| at - s.timestamp_ms)
            })
            .collect();
        out.sort_unstable();
        out
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64
}

struct PipelineFigures {
    messages_per_s: f64,
    events: u64,
    expected_events: u64,
    events_per_s: f64,
    latency_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    latency_messages: usize,
    peak_rss_mib: f64,
    database_url: String,
    /// The API run, unless `EM_BENCH_API_CLIENTS=0`.
    api: Option<ApiFigures>,
}

/// What the events API answered while the pipeline ingested at half its maximum rate.
struct ApiFigures {
    clients: usize,
    /// Messages per second stored meanwhile (sent at half the pipeline's maximum).
    ingest_rate: f64,
    load: http_load::Outcome,
    /// Consume-to-commit latencies of the messages produced meanwhile (ms, sorted).
    commit_latencies: Vec<i64>,
    /// The pipeline's peak RSS after the API run.
    peak_rss_mib: f64,
}

async fn create_database(admin: &tokio_postgres::Client, base_url: &str) -> String {
    let db = format!("bench_{}", uuid::Uuid::now_v7().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let mut url: url::Url = base_url.parse().unwrap();
    url.set_path(&format!("/{db}"));
    url.to_string()
}

#[allow(clippy::too_many_arguments)]
async fn pipeline_run(
    broker: &Broker,
    admin: &tokio_postgres::Client,
    base_url: &str,
    workload: &mut Workload,
    messages: &[Msg],
    latency_secs: u64,
    api_clients: usize,
    api_secs: u64,
    api_distinct: bool,
    rng: &mut Rng,
    clock: &mut DateTime<Utc>,
) -> PipelineFigures {
    let database_url = create_database(admin, base_url).await;
    let topics = Topics::create(broker, workload, "run").await;
    let log = bench_dir().join(format!("pipeline-{}.log", workload.name));
    let mut pipeline = Pipeline::start(&topics, broker, &database_url, log);
    pipeline.ready().await;
    let watch = OffsetWatch::start(&database_url).await;
    let producer = producer(broker).await;

    let started = Instant::now();
    produce(
        &producer,
        &topics,
        messages.iter(),
        broker.window(topics.total_partitions()),
        &watch.stored,
        None,
    )
    .await;
    watch.wait_for(messages.len() as u64).await;
    let elapsed = started.elapsed().as_secs_f64();
    let messages_per_s = messages.len() as f64 / elapsed;

    let (client, conn) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let events: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);

    // Half the maximum, for the latency.
    let latency_rate = messages_per_s / 2.0;
    let n = (latency_rate * latency_secs as f64) as u64;
    let more = generate(workload, n, rng, clock, EVENT_TIME_STEP);
    let before = watch.stored.load(Ordering::Relaxed);
    let sent = produce(
        &producer,
        &topics,
        more.iter(),
        broker.window(topics.total_partitions()),
        &watch.stored,
        Some(latency_rate),
    )
    .await;
    watch.wait_for(before + sent.len() as u64).await;
    tokio::time::sleep(OFFSET_POLL * 2).await;
    let latencies = watch.latencies(&topics, &sent);
    let peak_rss_mib = pipeline.peak_rss_mib();

    let api = if api_clients > 0 {
        let ingest = Ingest {
            topics: &topics,
            broker,
            producer: &producer,
            watch: &watch,
        };
        let secs = Duration::from_secs(api_secs);
        let run = ApiRun {
            clients: api_clients,
            rate: latency_rate,
            duration: secs,
            distinct: api_distinct,
        };
        Some(api_under_ingest(&pipeline, ingest, run, workload, rng, clock).await)
    } else {
        None
    };
    watch.stop().await;
    drop(pipeline);

    PipelineFigures {
        messages_per_s,
        events: events as u64,
        expected_events: messages.iter().map(|m| u64::from(m.events)).sum(),
        events_per_s: events as f64 / elapsed,
        latency_rate,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        latency_messages: latencies.len(),
        peak_rss_mib,
        database_url,
        api,
    }
}

/// Where a run's messages go and how their commits are watched.
struct Ingest<'a> {
    topics: &'a Topics,
    broker: &'a Broker,
    producer: &'a BenchProducer,
    watch: &'a OffsetWatch,
}

/// The API run's load: `clients` keep-alive clients for `duration`, while messages are
/// produced at `rate` per second.
struct ApiRun {
    clients: usize,
    rate: f64,
    duration: Duration,
    /// Windows end at the request's microsecond rather than its second (`EM_BENCH_API_WINDOWS`).
    distinct: bool,
}

/// The events API of the running pipeline under `run.clients` keep-alive clients listing
/// events ([`API_LISTS`] in turn) while the pipeline ingests at `run.rate`. The messages'
/// event times follow the wall clock at the rate they are sent, shifted by however far the
/// generator's clock is ahead; each request asks for the hour up to its own "now" on that
/// clock, to the second, as a client asking for the last hour does: the newest minute of its
/// window is the one being written.
async fn api_under_ingest(
    pipeline: &Pipeline,
    ingest: Ingest<'_>,
    run: ApiRun,
    workload: &mut Workload,
    rng: &mut Rng,
    clock: &mut DateTime<Utc>,
) -> ApiFigures {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pipeline.http));
    let key = AuthConfig {
        hs256_secret: Some(TOKEN_KEY.into()),
        ..AuthConfig::default()
    };
    let token = mint_token(&key, &["event:read".into()], run.duration * 10, "bench").unwrap();
    let n = (run.rate * run.duration.as_secs_f64()) as u64;
    let step = chrono::Duration::microseconds((1e6 / run.rate).max(1.0) as i64);
    let start = (*clock).max(Utc::now());
    let mut at = start;
    let messages = generate(workload, n, rng, &mut at, step);
    *clock = at;
    let lead = start - Utc::now();
    let request = move |i: usize| {
        let kind = i % API_LISTS.len();
        let end = Utc::now() + lead;
        let from = end - chrono::Duration::hours(1);
        let format = if run.distinct {
            "%Y-%m-%dT%H:%M:%S%.6fZ"
        } else {
            "%Y-%m-%dT%H:%M:%SZ"
        };
        let path = format!(
            "/api/events?date={}&date_to={}{}",
            from.format(format),
            end.format(format),
            API_LISTS[kind].1
        );
        (kind, path)
    };
    // Warm-up (each pooled connection prepares its statements), then the measured run.
    http_load::load(addr, &token, run.clients, Duration::from_secs(1), request).await;
    let before = ingest.watch.stored.load(Ordering::Relaxed);
    let (sent, load) = tokio::join!(
        produce(
            ingest.producer,
            ingest.topics,
            messages.iter(),
            ingest.broker.window(ingest.topics.total_partitions()),
            &ingest.watch.stored,
            Some(run.rate),
        ),
        http_load::load(addr, &token, run.clients, run.duration, request),
    );
    // Messages stored (their offsets committed) while the clients were served: below the rate
    // sent when ingestion fell behind.
    let stored = ingest.watch.stored.load(Ordering::Relaxed) - before;
    ingest.watch.wait_for(before + sent.len() as u64).await;
    tokio::time::sleep(OFFSET_POLL * 2).await;
    ApiFigures {
        clients: run.clients,
        ingest_rate: stored as f64 / load.elapsed.as_secs_f64(),
        load,
        commit_latencies: ingest.watch.latencies(ingest.topics, &sent),
        peak_rss_mib: pipeline.peak_rss_mib(),
    }
}

/// One event row as the pipeline stored it.
struct EventRow {
    event_type: String,
    entity_type: String,
    entity_id: String,
    properties: serde_json::Value,
    event_time: DateTime<Utc>,
    changed_by: Option<String>,
    source_topic: String,
    source_partition: i32,
    source_offset: i64,
    source_seq: i32,
}

/// How the write ceiling's schema is changed before the COPY: its name in the table and the JSON,
/// and the SQL.
fn write_variants() -> Vec<(&'static str, String)> {
    vec![
        ("schema", String::new()),
        (
            "no count triggers",
            "ALTER TABLE events DISABLE TRIGGER USER".to_owned(),
        ),
        (
            "with the GIN index of long windows",
            "CREATE INDEX events_properties_keys_idx ON events USING gin (properties jsonb_ops)"
                .to_owned(),
        ),
        (
            "without the value index of status",
            format!(
                "DROP INDEX {}",
                event_manager::store::attribute_indexes::value_index("status").name
            ),
        ),
    ]
}

/// Rows per second a binary COPY writes the pipeline's event rows at, into a fresh database of
/// the real schema changed by `alter`, in transactions of [`COPY_BATCH`] rows. The real schema
/// is the one `run` makes with the default settings: the migrations and the indexes of
/// `api.indexed_attributes` and `api.indexed_values` (the value index of `status`). The rows
/// are repeated (with new ids and source offsets) up to `min_rows`.
async fn write_ceiling(
    admin: &tokio_postgres::Client,
    base_url: &str,
    rows: &[EventRow],
    min_rows: usize,
    alter: &str,
) -> f64 {
    let url = create_database(admin, base_url).await;
    let store = EventStore::connect(&DatabaseConfig {
        url: url.parse().expect("the bench database's URL"),
        pool_size: 1,
        ..DatabaseConfig::default()
    })
    .unwrap();
    store.migrate().await.unwrap();
    let api = event_manager::config::ApiConfig::default();
    store
        .ensure_api_indexes(&api.indexed_attributes, &api.indexed_values, false)
        .await
        .unwrap();
    drop(store);
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    if !alter.is_empty() {
        client.batch_execute(alter).await.unwrap();
    }
    let types = [
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::INT8,
        Type::INT4,
    ];
    let total = min_rows.max(rows.len());
    let started = Instant::now();
    let mut written = 0;
    while written < total {
        let tx = client.transaction().await.unwrap();
        let sink = tx
            .copy_in(
                "COPY events (id, event_type, entity_type, entity_id, properties, event_time, \
                 changed_by, source_topic, source_partition, source_offset, source_seq) \
                 FROM STDIN BINARY",
            )
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        let end = (written + COPY_BATCH).min(total);
        for i in written..end {
            let r = &rows[i % rows.len()];
            let round = (i / rows.len()) as i64;
            let id = uuid::Uuid::now_v7();
            let offset = r.source_offset + round * 1_000_000_000_000;
            let values: [&(dyn ToSql + Sync); 11] = [
                &id,
                &r.event_type,
                &r.entity_type,
                &r.entity_id,
                &r.properties,
                &r.event_time,
                &r.changed_by,
                &r.source_topic,
                &r.source_partition,
                &offset,
                &r.source_seq,
            ];
            writer.as_mut().write(&values).await.unwrap();
        }
        writer.finish().await.unwrap();
        tx.commit().await.unwrap();
        written = end;
    }
    let per_s = total as f64 / started.elapsed().as_secs_f64();
    drop(client);
    drop_database(admin, &url).await;
    per_s
}

async fn read_events(database_url: &str) -> Vec<EventRow> {
    let (client, conn) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query(
            "SELECT event_type, entity_type, entity_id, properties, event_time, changed_by, \
                    source_topic, source_partition, source_offset, source_seq \
             FROM events ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| EventRow {
            event_type: r.get(0),
            entity_type: r.get(1),
            entity_id: r.get(2),
            properties: r.get(3),
            event_time: r.get(4),
            changed_by: r.get(5),
            source_topic: r.get(6),
            source_partition: r.get(7),
            source_offset: r.get(8),
            source_seq: r.get(9),
        })
        .collect()
}

async fn drop_database(admin: &tokio_postgres::Client, url: &str) {
    let url: url::Url = url.parse().unwrap();
    let db = url.path().trim_start_matches('/');
    let _ = admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await;
}

// ---------------------------------------------------------------------------------------------
// The run

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a tiny smoke size.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mixed_messages: u64 = env_or(
        "EM_BENCH_MIXED_MESSAGES",
        if smoke { 2_000 } else { 200_000 },
    );
    let esoz_messages: u64 = env_or(
        "EM_BENCH_ESOZ_MESSAGES",
        if smoke { 2_000 } else { 100_000 },
    );
    let latency_secs: u64 = env_or("EM_BENCH_LATENCY_SECS", if smoke { 2 } else { 20 });
    let api_clients: usize = env_or("EM_BENCH_API_CLIENTS", if smoke { 4 } else { 50 });
    let api_secs: u64 = env_or("EM_BENCH_API_SECS", if smoke { 2 } else { 60 });
    let api_windows: String = env_or("EM_BENCH_API_WINDOWS", "second".to_owned());
    let api_distinct = match api_windows.as_str() {
        "second" => false,
        "microsecond" => true,
        other => panic!("EM_BENCH_API_WINDOWS: `second` or `microsecond`, not `{other}`"),
    };
    let selected: String = env_or("EM_BENCH_WORKLOADS", "mixed,esoz".to_owned());
    let variants = std::env::var("EM_BENCH_WRITE_VARIANTS").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let local;
    let base_url = match std::env::var("DATABASE_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            local = LocalPostgres::start().expect("PostgreSQL server binaries");
            local.url("postgres")
        }
    };
    let broker = match std::env::var("EM_BENCH_BOOTSTRAP") {
        Ok(b) if !b.is_empty() => Broker::Real(b),
        _ => Broker::Mock(EmbeddedBroker::start(1).unwrap()),
    };
    let broker_name = match &broker {
        Broker::Mock(_) => "in-process MockCluster",
        Broker::Real(_) => "real Kafka (EM_BENCH_BOOTSTRAP)",
    };
    println!("pipeline bench on {broker_name}");

    let mut results = serde_json::Map::new();
    let mut table = Vec::new();
    let mut api_table = Vec::new();
    runtime.block_on(async {
        let (admin, conn) = tokio_postgres::connect(&base_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for (mut workload, n) in [(mixed(), mixed_messages), (esoz(), esoz_messages)] {
            if !selected.split(',').any(|s| s.trim() == workload.name) {
                continue;
            }
            let mut rng = Rng::new(7);
            let mut clock = Utc::now();
            let messages = generate(&mut workload, n, &mut rng, &mut clock, EVENT_TIME_STEP);
            let consume = consume_ceiling(&broker, &workload, &messages).await;
            println!("  {}: consume ceiling {consume:.0} msg/s", workload.name);
            let p = pipeline_run(
                &broker,
                &admin,
                &base_url,
                &mut workload,
                &messages,
                latency_secs,
                api_clients,
                api_secs,
                api_distinct,
                &mut rng,
                &mut clock,
            )
            .await;
            println!(
                "  {}: pipeline {:.0} msg/s, {} events (the generator meant {}), latency at {:.0} msg/s over {} messages",
                workload.name, p.messages_per_s, p.events, p.expected_events, p.latency_rate, p.latency_messages
            );
            let rows = read_events(&p.database_url).await;
            drop_database(&admin, &p.database_url).await;
            let min_rows = if smoke { 1_000 } else { 50_000 };
            let mut writes = serde_json::Map::new();
            let mut write = f64::NAN;
            for (name, alter) in write_variants() {
                if !variants && name != "schema" {
                    continue;
                }
                let per_s = write_ceiling(&admin, &base_url, &rows, min_rows, &alter).await;
                println!("  {}: write ceiling ({name}) {per_s:.0} rows/s", workload.name);
                if name == "schema" {
                    write = per_s;
                }
                writes.insert(name.to_owned(), json!(per_s.round()));
            }
            let change_rate = p.events as f64 / n as f64;
            let ceiling = if change_rate > 0.0 {
                consume.min(write / change_rate)
            } else {
                consume
            };
            let ratio = p.messages_per_s / ceiling;
            table.push(format!(
                "| {:<6} | {:>9.0} | {:>9.0} | {:>6.3} | {:>10.0} | {:>10.0} | {:>5.2} | {:>6.0} | {:>6.0} | {:>6.0} |",
                workload.name,
                p.messages_per_s,
                p.events_per_s,
                change_rate,
                consume,
                write,
                ratio,
                p.p50_ms,
                p.p99_ms,
                p.peak_rss_mib,
            ));
            let mut figures = json!({
                    "messages": n,
                    "events": p.events,
                    "change_rate": change_rate,
                    "messages_per_s": p.messages_per_s.round(),
                    "events_per_s": p.events_per_s.round(),
                    "consume_ceiling_per_s": consume.round(),
                    "write_ceiling_rows_per_s": write.round(),
                    "write_ceiling_variants_rows_per_s": writes,
                    "ratio_to_ceiling": (ratio * 1000.0).round() / 1000.0,
                    "latency_rate_per_s": p.latency_rate.round(),
                    "p50_commit_latency_ms": p.p50_ms,
                    "p99_commit_latency_ms": p.p99_ms,
                    "peak_rss_mib": (p.peak_rss_mib * 10.0).round() / 10.0,
            });
            if let Some(api) = &p.api {
                let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
                let all = api.load.latencies(None);
                let p99_by_filter: Vec<(&str, f64)> = API_LISTS
                    .iter()
                    .enumerate()
                    .map(|(kind, (label, _))| {
                        let of_kind = api.load.latencies(Some(kind));
                        (*label, ms(http_load::percentile(&of_kind, 0.99)))
                    })
                    .collect();
                let commit_p99 = percentile(&api.commit_latencies, 0.99);
                api_table.push(format!(
                    "| {:<6} | {:>7} | {:>8.0} | {:>8.0} | {:>6.1} | {:>7.1} | {:>7.1} | {:>6} | {:>13.0} |",
                    workload.name,
                    api.clients,
                    api.load.requests_per_s(),
                    api.ingest_rate,
                    ms(http_load::percentile(&all, 0.50)),
                    ms(http_load::percentile(&all, 0.99)),
                    ms(all.last().copied().unwrap_or_default()),
                    api.load.errors,
                    commit_p99,
                ));
                for (label, p99) in &p99_by_filter {
                    println!("  {}: API p99 {p99} ms for {label}", workload.name);
                }
                let p99_by_filter: serde_json::Map<_, _> = p99_by_filter
                    .into_iter()
                    .map(|(label, p99)| (label.to_owned(), json!(p99)))
                    .collect();
                figures["api_clients"] = json!(api.clients);
                figures["api_ingest_rate_per_s"] = json!(api.ingest_rate.round());
                figures["api_requests_per_s"] = json!(api.load.requests_per_s().round());
                figures["api_list_p50_ms"] = json!(ms(http_load::percentile(&all, 0.50)));
                figures["api_list_p99_ms"] = json!(ms(http_load::percentile(&all, 0.99)));
                figures["api_list_max_ms"] = json!(ms(all.last().copied().unwrap_or_default()));
                figures["api_list_p99_ms_by_filter"] = json!(p99_by_filter);
                figures["api_errors"] = json!(api.load.errors);
                figures["api_p99_commit_latency_ms"] = json!(commit_p99);
                figures["api_peak_rss_mib"] = json!((api.peak_rss_mib * 10.0).round() / 10.0);
            }
            results.insert(workload.name.to_owned(), figures);
        }
    });
    println!();
    println!("| load   |     msg/s |  events/s | change | consume/s  | write rows/s | ratio | p50 ms | p99 ms | RSS MiB |");
    println!("|--------|-----------|-----------|--------|------------|------------|-------|--------|--------|---------|");
    for row in &table {
        println!("{row}");
    }
    if !api_table.is_empty() {
        println!();
        println!("| load   | clients |    req/s | ingest/s | p50 ms | p99 ms  | max ms  | errors | commit p99 ms |");
        println!("|--------|---------|----------|----------|--------|---------|---------|--------|---------------|");
        for row in &api_table {
            println!("{row}");
        }
    }
    let out = bench_dir().join("pipeline.json");
    let document = json!({
        "broker": broker_name,
        "latency_secs": latency_secs,
        "api_secs": api_secs,
        "api_windows": api_windows,
        "workloads": results,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&document).unwrap()).unwrap();
    println!("\nwrote {}", out.display());
}
