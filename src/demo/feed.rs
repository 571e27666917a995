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
    pub(crate) fn next_u64(&mut self) -> u64 {
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
pub(crate) struct EsozSamples {
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
            // An entity not seen before. ESOZ publishes changes only, not the creation, so its
            // first message is a transition out of the initial status: an event with
            // `old_value: null`.
            let kind = rng.below(ESOZ_LIFECYCLES.len());
            let statuses = ESOZ_LIFECYCLES[kind].2.len();
            let status = 1 + rng.below(statuses - 1);
            let e = EsozEntity {
                kind,
                id: rng.uuid(),
                status,
                time: now,
                employee_id: rng.uuid(),
            };
            let sample = self.message(&e, status, now, &changed_by);
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

/// Danish eHealth broker messages: status context events (properties as headers, spelled as
/// real producers do, with HTTP capture noise among them), some without a status value, some
/// late; care-team reference events; care-plan lifecycle events.
#[derive(Debug, Default)]
pub(crate) struct EhealthDkSamples {
    resources: Vec<(usize, String, usize, i64)>, // (profile, id, status, version)
}

const DK_PROFILES: &[(&str, &[&str])] = &[
    (
        "ehealth-careplan",
        &["draft", "active", "on-hold", "completed", "revoked"],
    ),
    (
        "ehealth-episodeofcare",
        &["planned", "active", "onhold", "finished", "cancelled"],
    ),
];

impl EhealthDkSamples {
    fn context(
        &self,
        profile: usize,
        id: &str,
        status: Option<&str>,
        version: i64,
        event: &str,
        rng: &mut Rng,
    ) -> Sample {
        let (name, _) = DK_PROFILES[profile];
        let reference = format!(
            "https://{}.ehealth.example.dk/fhir/{}/{id}",
            &name[8..],
            resource_type(name)
        );
        // Some producers spell the property headers in lower case; HTTP capture noise rides along.
        let lower = rng.below(3) == 0;
        let spell = |canonical: &str| {
            if lower {
                canonical.to_ascii_lowercase()
            } else {
                canonical.to_owned()
            }
        };
        let mut headers = vec![
            (spell("messageType"), "EHealthContextEvent".to_owned()),
            (spell("messageVersion"), "1.0".to_owned()),
            (spell("eventType"), event.to_owned()),
            (spell("resourceReference"), reference.clone()),
            (spell("resourceVersion"), version.to_string()),
            (spell("resourceProfile"), name.to_owned()),
            ("context".to_owned(), "status".to_owned()),
            (
                spell("patientReference"),
                format!(
                    "https://patient.ehealth.example.dk/fhir/Patient/{}",
                    rng.below(500)
                ),
            ),
        ];
        if rng.below(4) == 0 {
            headers.push(("server".to_owned(), "nginx".to_owned()));
            headers.push(("content-type".to_owned(), "application/json".to_owned()));
        }
        let mut body = json!({
            "messageType": "EHealthContextEvent",
            "messageVersion": "1.0",
            "eventType": event,
            "resourceReference": reference,
            "resourceVersion": version.to_string(),
            "context": "status",
        });
        if let Some(status) = status {
            body["status"] = json!(status);
        }
        Sample {
            topic: format!("{name}.status"),
            key: Some(reference),
            payload: body.to_string().into_bytes(),
            headers,
        }
    }
}

fn resource_type(profile: &str) -> &'static str {
    if profile.ends_with("careplan") {
        "CarePlan"
    } else {
        "EpisodeOfCare"
    }
}

impl SampleSource for EhealthDkSamples {
    fn next(&mut self, rng: &mut Rng, _now: DateTime<Utc>) -> Sample {
        let roll = rng.below(100);
        if self.resources.len() < 10 || roll < 20 {
            let profile = rng.below(DK_PROFILES.len());
            let id = rng.uuid();
            let status = DK_PROFILES[profile].1[0];
            let sample = self.context(profile, &id, Some(status), 1, "created", rng);
            self.resources.push((profile, id, 0, 1));
            if self.resources.len() > 2000 {
                self.resources.swap_remove(0);
            }
            return sample;
        }
        let i = rng.below(self.resources.len());
        let (profile, id, status, version) = self.resources[i].clone();
        let statuses = DK_PROFILES[profile].1;
        match roll {
            20..=69 => {
                let next = (status + 1 + rng.below(statuses.len() - 1)) % statuses.len();
                self.resources[i] = (profile, id.clone(), next, version + 1);
                self.context(
                    profile,
                    &id,
                    Some(statuses[next]),
                    version + 1,
                    "updated",
                    rng,
                )
            }
            70..=79 => {
                // No status in the message: nothing can be known without a FHIR look-up.
                self.resources[i].3 = version + 1;
                self.context(profile, &id, None, version + 1, "updated", rng)
            }
            80..=89 => {
                // A late message with an older version.
                let other = (status + 1) % statuses.len();
                self.context(
                    profile,
                    &id,
                    Some(statuses[other]),
                    (version - 1).max(1),
                    "updated",
                    rng,
                )
            }
            90..=94 => {
                let reference = format!("https://careplan.ehealth.example.dk/fhir/CarePlan/{id}");
                let event = if rng.below(2) == 0 {
                    "reference_added"
                } else {
                    "reference_removed"
                };
                Sample {
                    topic: "ehealth-careplan.careteam".into(),
                    key: Some(reference.clone()),
                    payload: json!({
                        "messageType": "EHealthReferenceEvent",
                        "messageVersion": "1.0",
                        "eventType": event,
                        "resourceReference": reference,
                        "resourceVersion": (version + 1).to_string(),
                        "resourceElement": "careTeam",
                        "references": [format!("https://careplan.ehealth.example.dk/fhir/CareTeam/{}", rng.below(20))],
                        "resourceProfile": "ehealth-careplan",
                    })
                    .to_string()
                    .into_bytes(),
                    headers: Vec::new(),
                }
            }
            _ => {
                let reference = format!("https://careplan.ehealth.example.dk/fhir/CarePlan/{id}");
                Sample {
                    topic: "ehealth-careplan".into(),
                    key: Some(reference.clone()),
                    payload: json!({
                        "messageType": "EHealthSimpleEvent",
                        "messageVersion": "1.0",
                        "eventType": "updated",
                        "resourceReference": reference,
                        "resourceVersion": (version + 1).to_string(),
                    })
                    .to_string()
                    .into_bytes(),
                    headers: vec![("resourceProfile".into(), "ehealth-careplan".into())],
                }
            }
        }
    }
}

/// RCP v2 envelopes: timeslots created, updated and deleted; patient calls finished.
#[derive(Debug, Default)]
pub(crate) struct RcpV2Samples {
    timeslots: Vec<String>,
}

impl SampleSource for RcpV2Samples {
    fn next(&mut self, rng: &mut Rng, now: DateTime<Utc>) -> Sample {
        let roll = rng.below(100);
        // Both spellings of the type occur in the wild.
        let spelled = |long: &str, short: &str, rng: &mut Rng| {
            if rng.below(4) == 0 {
                short.to_owned()
            } else {
                long.to_owned()
            }
        };
        let (resource, kind, target, data) = if self.timeslots.is_empty() || roll < 35 {
            let id = rng.uuid();
            self.timeslots.push(id.clone());
            if self.timeslots.len() > 2000 {
                self.timeslots.swap_remove(0);
            }
            let data = json!({"spec": {"type": "call", "user_uid": rng.uuid(), "patient_uid": rng.uuid(), "duration_secs": "900", "program": "ccm", "tags": []}});
            ("timeslots", spelled("created", "create", rng), id, data)
        } else if roll < 65 {
            let id = self.timeslots[rng.below(self.timeslots.len())].clone();
            let data = json!({"updater_uid": rng.uuid(), "reason": "rescheduled", "updates": {"duration_secs": "1200"}});
            ("timeslots", spelled("updated", "update", rng), id, data)
        } else if roll < 75 {
            let i = rng.below(self.timeslots.len());
            let id = self.timeslots.swap_remove(i);
            (
                "timeslots",
                spelled("deleted", "delete", rng),
                id,
                json!({"updater_uid": rng.uuid()}),
            )
        } else {
            let data = json!({"status": "finished", "patient_uid": rng.uuid(), "user_uid": rng.uuid(), "program": "ccm", "duration_secs": "300", "call_id": rng.uuid()});
            ("patient_calls", "updated".to_owned(), rng.uuid(), data)
        };
        Sample {
            topic: "rcp-v2.events".into(),
            key: Some(target.clone()),
            payload: json!({
                "group": "rcp-v2",
                "namespace": "",
                "uid": rng.uuid(),
                "date": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "resource": resource,
                "type": kind,
                "target": target,
                "data": data,
                "metadata": {"trace_id": rng.uuid()},
            })
            .to_string()
            .into_bytes(),
            headers: Vec::new(),
        }
    }
}

/// Smart Flow Sheet webhook events as the bridge produces them (the clinic API key is not on
/// the topic): discharges (single and batched), medical records, inventory imports, and event
/// types SFS's documentation does not list.
#[derive(Debug, Default)]
pub(crate) struct SfsSamples;

impl SampleSource for SfsSamples {
    fn next(&mut self, rng: &mut Rng, _now: DateTime<Utc>) -> Sample {
        let hospitalization = |rng: &mut Rng| json!({"objectType": "hospitalization", "id": rng.uuid(), "hospitalizationId": format!("emr-h-{}", rng.below(100_000))});
        let (event_type, object) = match rng.below(100) {
            0..=34 => ("hospitalization.discharged", hospitalization(rng)),
            35..=49 => {
                let items: Vec<_> = (0..1 + rng.below(3))
                    .map(|_| hospitalization(rng))
                    .collect();
                (
                    "hospitalizations.discharged",
                    json!({"objectType": "hospitalizations", "id": rng.uuid(), "hospitalizations": items}),
                )
            }
            50..=74 => (
                "treatment.record_entered",
                json!({"objectType": "treatment", "treatmentGuid": rng.uuid(), "hospitalizationId": format!("emr-h-{}", rng.below(100_000)), "removed": rng.below(5) == 0}),
            ),
            75..=89 => {
                let items: Vec<_> = (0..2).map(|_| json!({"objectType": "treatment", "treatmentGuid": rng.uuid(), "hospitalizationId": "emr-h-1"})).collect();
                (
                    "treatments.records_entered",
                    json!({"objectType": "treatments", "treatments": items}),
                )
            }
            90..=95 => (
                "inventoryitems.imported",
                json!({"objectType": "inventoryitems", "id": rng.uuid(), "status": "finished"}),
            ),
            _ => ("flowsheet.report_ready", json!({"id": rng.uuid()})),
        };
        Sample {
            topic: "sfs.events".into(),
            key: None,
            payload: json!({"eventType": event_type, "object": object})
                .to_string()
                .into_bytes(),
            headers: Vec::new(),
        }
    }
}

/// FHIRcast notifications of a few sessions: patients opened and closed, studies opened,
/// report updates (which never change context), and the odd malformed timestamp.
#[derive(Debug, Default)]
pub(crate) struct FhircastSamples {
    sessions: Vec<String>,
}

impl SampleSource for FhircastSamples {
    fn next(&mut self, rng: &mut Rng, now: DateTime<Utc>) -> Sample {
        if self.sessions.len() < 8 {
            self.sessions.push(rng.uuid());
        }
        let topic = self.sessions[rng.below(self.sessions.len())].clone();
        let patient = json!({"key": "patient", "resource": {"resourceType": "Patient", "id": format!("p{}", rng.below(50))}});
        let (event, context) = match rng.below(100) {
            0..=44 => ("Patient-open", json!([patient])),
            45..=64 => ("Patient-close", json!([patient])),
            65..=84 => (
                "ImagingStudy-open",
                json!([patient, {"key": "study", "resource": {"resourceType": "ImagingStudy", "id": format!("s{}", rng.below(100))}}]),
            ),
            _ => (
                "DiagnosticReport-update",
                json!([{"key": "report", "resource": {"resourceType": "DiagnosticReport", "id": "r1"}}]),
            ),
        };
        let timestamp = if rng.below(20) == 0 {
            // As in the specification's own examples.
            now.format("%Y-%m-%dT%H:%M:%S%.3f +00").to_string()
        } else {
            now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        Sample {
            topic: "fhircast.events".into(),
            key: Some(topic.clone()),
            payload: json!({"timestamp": timestamp, "id": rng.uuid(), "event": {"hub.topic": topic, "hub.event": event, "context": context}})
                .to_string()
                .into_bytes(),
            headers: Vec::new(),
        }
    }
}

/// Concrete topics the samples use that rules only match by pattern (created by the demo).
pub const PATTERN_TOPICS: &[&str] = &["ehealth-careplan.status", "ehealth-episodeofcare.status"];

/// The sample sources for the formats present in the topic rules.
pub fn sources_for(formats: &[crate::formats::Format]) -> Vec<Box<dyn SampleSource>> {
    use crate::formats::Format;
    let mut sources: Vec<Box<dyn SampleSource>> = Vec::new();
    if formats.contains(&Format::Esoz) {
        sources.push(Box::new(EsozSamples::default()));
    }
    if formats.contains(&Format::EhealthDk) {
        sources.push(Box::new(EhealthDkSamples::default()));
    }
    if formats.contains(&Format::RcpV2) {
        sources.push(Box::new(RcpV2Samples::default()));
    }
    if formats.contains(&Format::Sfs) {
        sources.push(Box::new(SfsSamples));
    }
    if formats.contains(&Format::Fhircast) {
        sources.push(Box::new(FhircastSamples::default()));
    }
    sources
}
