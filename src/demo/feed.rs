//! Realistic sample messages for the demo: new entities, real changes, repeats, out-of-order
//! deliveries and the occasional malformed message, in every source format configured.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::json;

/// A message to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Topic.
    pub topic: String,
    /// Key (entity id, for ordering), if any.
    pub key: Option<String>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

/// A small deterministic random source (xorshift64*), so demo runs are reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Next raw value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A random UUID-shaped identifier.
    pub fn uuid(&mut self) -> String {
        uuid::Uuid::from_u64_pair(self.next_u64(), self.next_u64())
            .hyphenated()
            .to_string()
    }
}

/// A source of sample messages of one format.
pub trait SampleSource: Send {
    /// The next sample at simulated time `now`.
    fn next(&mut self, rng: &mut Rng, now: DateTime<Utc>) -> Sample;
}

/// ESOZ entity types with their status life cycles (casing differs by entity, as in ESOZ).
const ESOZ_LIFECYCLES: &[(&str, &str, &[&str])] = &[
    (
        "EmployeeRequest",
        "StatusChangeEvent",
        &["NEW", "APPROVED", "REJECTED", "EXPIRED"],
    ),
    (
        "Declaration",
        "StatusChangeEvent",
        &[
            "pending_verification",
            "active",
            "terminated",
            "closed",
            "rejected",
        ],
    ),
    (
        "MedicationRequest",
        "StatusChangeEvent",
        &["ACTIVE", "COMPLETED", "REJECTED", "EXPIRED"],
    ),
    (
        "Episode",
        "StatusChangeEvent",
        &["active", "closed", "entered_in_error"],
    ),
    ("LegalEntity", "StateChangeEvent", &["false", "true"]),
];

#[derive(Debug, Clone)]
struct EsozEntity {
    kind: usize,
    id: String,
    status: usize,
    time: DateTime<Utc>,
    employee_id: String,
}

/// ESOZ StatusChangeEvents on `event_manager_topic`.
#[derive(Debug, Default)]
pub struct EsozSamples {
    entities: Vec<EsozEntity>,
}

impl EsozSamples {
    fn message(
        &self,
        e: &EsozEntity,
        status: usize,
        time: DateTime<Utc>,
        changed_by: &str,
    ) -> Sample {
        let (entity_type, event_type, statuses) = ESOZ_LIFECYCLES[e.kind];
        let properties = if event_type == "StateChangeEvent" {
            json!({ "is_suspended": { "new_value": statuses[status] == "true" } })
        } else if entity_type == "EmployeeRequest" {
            json!({ "status": { "new_value": statuses[status] }, "employee_id": { "new_value": e.employee_id } })
        } else {
            json!({ "status": { "new_value": statuses[status] } })
        };
        let body = json!({
            "event_type": event_type,
            "entity_type": entity_type,
            "entity_id": e.id,
            "properties": properties,
            "event_time": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "changed_by": changed_by,
        });
        Sample {
            topic: "event_manager_topic".into(),
            key: Some(e.id.clone()),
            payload: body.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }
}

impl SampleSource for EsozSamples {
    fn next(&mut self, rng: &mut Rng, now: DateTime<Utc>) -> Sample {
        let roll = rng.below(100);
        let changed_by = rng.uuid();
        if self.entities.is_empty() || roll < 25 || self.entities.len() < 20 {
            // A new entity: its first status is a baseline, not an event.
            let kind = rng.below(ESOZ_LIFECYCLES.len());
            let e = EsozEntity {
                kind,
                id: rng.uuid(),
                status: 0,
                time: now,
                employee_id: rng.uuid(),
            };
            let sample = self.message(&e, 0, now, &changed_by);
            if self.entities.len() >= 5000 {
                let i = rng.below(self.entities.len());
                self.entities.swap_remove(i);
            }
            self.entities.push(e);
            return sample;
        }
        let i = rng.below(self.entities.len());
        let e = self.entities[i].clone();
        let statuses = ESOZ_LIFECYCLES[e.kind].2;
        if roll < 70 {
            // A real change.
            let next = (e.status + 1 + rng.below(statuses.len() - 1)) % statuses.len();
            let time = now.max(e.time + ChronoDuration::seconds(1));
            self.entities[i].status = next;
            self.entities[i].time = time;
            self.message(&e, next, time, &changed_by)
        } else if roll < 85 {
            // A repeat (re-delivery by the producer).
            self.message(&e, e.status, e.time, &changed_by)
        } else if roll < 99 {
            // Out of order: an older message with another status arrives late.
            let other = (e.status + 1) % statuses.len();
            self.message(&e, other, e.time - ChronoDuration::minutes(5), &changed_by)
        } else {
            // Malformed: no entity_id (goes to the dead-letter topic).
            Sample {
                topic: "event_manager_topic".into(),
                key: None,
                payload: br#"{"event_type":"StatusChangeEvent","entity_type":"Declaration","properties":{"status":{"new_value":"active"}},"event_time":"2024-01-01T00:00:00Z"}"#.to_vec(),
                headers: Vec::new(),
            }
        }
    }
}

/// The sample sources for the formats present in the topic rules.
pub fn sources_for(formats: &[crate::formats::Format]) -> Vec<Box<dyn SampleSource>> {
    let mut sources: Vec<Box<dyn SampleSource>> = Vec::new();
    if formats.contains(&crate::formats::Format::Esoz) {
        sources.push(Box::new(EsozSamples::default()));
    }
    sources
}
