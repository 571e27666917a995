//! FHIRcast notifications:
//! `{timestamp, id, event: {hub.topic, hub.event, context: [{key, resource}]}}`.
//!
//! Each context key of a session is an entity: entity type `FhircastSession`, entity id
//! `<session>/key` (see [`SessionIds`]: the topic itself is never stored), attribute = the key, value = `ResourceType/id`, or NULL once closed; kind
//! Snapshot, because FHIRcast events are complete statements, never deltas. So that an older
//! notification cannot undo a newer one, the event time is the notification's `timestamp`.
//!
//! - `X-open` sets every key of its context, under its anchor (the entry whose resource is an X,
//!   remembered with each key's state as `set_by`). A `Patient-open` also sets the keys that hang
//!   off a patient (`encounter`, `study`, `report`) to NULL unless its context gives them: the
//!   new patient replaces the whole patient context.
//! - `X-close` sets X's key to NULL (the anchor's key, else the usual key for X), and with it
//!   every other key the matching open set: each key of the close's context and each
//!   patient-dependent key becomes NULL only where its state was set under the same anchor
//!   ([`Scope::OnlyUnder`]). So a `study` the `DiagnosticReport-open` set closes with the report
//!   even when the close lists it only to identify the report, while keys the open did not set
//!   stay, and so does the session's `patient`. A `Patient-close` sets to NULL every key of its
//!   context and every patient-dependent key.
//! - `-update`, `-select`, wildcard names, the key-less standard events (`syncerror`,
//!   `heartbeat`, `userlogout`, `userhibernate`) and proprietary reverse-domain events are
//!   accepted and ignored ([`DecodeNote::Ignored`]): they do not change context.
//! - A missing or malformed `timestamp` falls back to the Kafka timestamp (else now) with
//!   [`DecodeNote::LenientTimestamp`]; even the specification's examples carry malformed ones.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use message_selector::OwnedValue;
use serde::Deserialize;
use serde::Deserializer;

use super::wire::{deserialize_lenient, FromJson, Scalar};
use super::wire::{is_blank, parse_typed, receive_time, req_text, OptionTable};
use super::{payload, DecodeError, DecodeErrorKind, DecodeNote, Decoded};
use super::{Decoder, Format};
use super::{FormatConfigError, RawMessage};
use crate::model::{Attributes, Observation, ObservationKind, Properties, Scope};
use crate::time::parse_event_time;

/// Keys that only make sense while their patient is open.
const PATIENT_DEPENDENT: [&str; 3] = ["encounter", "study", "report"];

/// Decoder for the `fhircast` format. It has no options.
#[derive(Debug, Clone, Default)]
pub struct FhircastDecoder {
    sessions: SessionIds,
}

impl FhircastDecoder {
    /// Builds the decoder from a topic rule's `[options]` (the format has none) and the
    /// session identifiers of the configuration.
    pub(crate) fn from_options(
        options: &toml::Table,
        sessions: &SessionIds,
    ) -> Result<Self, FormatConfigError> {
        OptionTable::new("fhircast", options, &[])?;
        Ok(Self {
            sessions: sessions.clone(),
        })
    }
}

/// Hex digits of the keyed hash kept in an entity id (128 bits).
const TOPIC_HASH_HEX: usize = 32;

/// What stands for a session's `hub.topic` in entity ids. The topic is the session's secret —
/// for a subscription without a `hub.secret` the only thing that guards the callback — and
/// entity ids are readable by every API user, so ids use the configured subscription's name
/// (`subscription:<name>`) when the topic is configured, else a keyed hash
/// (`topic:<first 32 hex digits of HMAC-SHA256(key, hub.topic)>`), stable while the key stays
/// (docs/architecture.md, "FHIRcast session ids").
#[derive(Clone, Default)]
pub struct SessionIds {
    key: Vec<u8>,
    names: HashMap<String, String>,
}

impl fmt::Debug for SessionIds {
    // The key and the topics are secrets: only their presence and count are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionIds")
            .field(
                "key",
                &if self.key.is_empty() {
                    "none"
                } else {
                    "<redacted>"
                },
            )
            .field("names", &self.names.len())
            .finish()
    }
}

impl SessionIds {
    /// Ids from the hash key (empty: an unkeyed hash) and the configured `hub.topic` → name.
    pub fn new(key: &[u8], names: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            key: key.to_vec(),
            names: names.into_iter().collect(),
        }
    }

    /// The identifier of the session of `hub_topic`.
    pub fn session(&self, hub_topic: &str) -> String {
        if let Some(name) = self.names.get(hub_topic) {
            return format!("subscription:{name}");
        }
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(hub_topic.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut id = String::with_capacity(6 + TOPIC_HASH_HEX);
        id.push_str("topic:");
        for byte in digest.iter().take(TOPIC_HASH_HEX / 2) {
            id.push_str(&format!("{byte:02x}"));
        }
        id
    }

    /// The entity id a stored id of the old form `<hub.topic>/<key>` becomes.
    pub(crate) fn rekey(&self, old_entity_id: &str) -> Option<String> {
        let (topic, key) = old_entity_id.rsplit_once('/')?;
        Some(format!("{}/{key}", self.session(topic)))
    }
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireNotification<'a> {
    timestamp: Text<'a>,
    id: Text<'a>,
    event: Option<WireEvent<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireEvent<'a> {
    #[serde(rename = "hub.topic")]
    topic: Text<'a>,
    #[serde(rename = "hub.event")]
    event: Text<'a>,
    context: Option<Vec<WireContext<'a>>>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireContext<'a> {
    key: Text<'a>,
    resource: Option<WireResource<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireResource<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Text<'a>,
    id: Text<'a>,
}

/// A field of which this format only reads text. Unlike `Option<Scalar>` it keeps no number's
/// digits and has no `Option` layer: absent and `null` mean the same here.
#[derive(Default)]
enum Text<'a> {
    #[default]
    Missing,
    Str(Cow<'a, str>),
    /// A number, boolean, list or object (skipped without allocation).
    Other,
}

impl<'a> Text<'a> {
    /// The field as [`req_text`] and its reasons take it.
    fn into_scalar(self) -> Option<Scalar<'a>> {
        match self {
            Text::Missing => None,
            Text::Str(s) => Some(Scalar::Str(s)),
            Text::Other => Some(Scalar::Container),
        }
    }
}

impl<'a> FromJson<'a> for Text<'a> {
    fn text(s: Cow<'a, str>) -> Self {
        Text::Str(s)
    }
    fn boolean(_: bool) -> Self {
        Text::Other
    }
    fn number(_: &dyn fmt::Display) -> Self {
        Text::Other
    }
    fn null() -> Self {
        Text::Missing
    }
    fn container() -> Self {
        Text::Other
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_lenient::<'de, Text<'de>, D>(d)
    }
}

/// What an event name means for the context.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EventName<'a> {
    /// `Resource-open`, with the resource name as written (compare it ignoring ASCII case).
    Open(&'a str),
    /// `Resource-close`, with the resource name as written (compare it ignoring ASCII case).
    Close(&'a str),
    /// Valid, but does not change context.
    NoContextChange,
}

fn classify(name: &str) -> Result<EventName<'_>, DecodeError> {
    let bad = || {
        DecodeError::invalid(
            "event.hub.event",
            "an event name `Resource-open|close|update|select` or a reverse-domain name",
        )
    };
    if let Some((resource, action)) = name.split_once('-') {
        let resource_ok = resource == "*"
            || (!resource.is_empty()
                && resource.len() <= 64
                && resource.bytes().all(|b| b.is_ascii_alphabetic()));
        if !resource_ok {
            return Err(bad());
        }
        let is = |known: &str| action.eq_ignore_ascii_case(known);
        return if is("open") && resource != "*" {
            Ok(EventName::Open(resource))
        } else if is("close") && resource != "*" {
            Ok(EventName::Close(resource))
        } else if ["open", "close", "*", "update", "select"]
            .into_iter()
            .any(is)
        {
            Ok(EventName::NoContextChange)
        } else {
            Err(bad())
        };
    }
    if ["syncerror", "heartbeat", "userlogout", "userhibernate"]
        .into_iter()
        .any(|known| name.eq_ignore_ascii_case(known))
    {
        return Ok(EventName::NoContextChange);
    }
    // Case does not matter to the grammar below: ASCII letters are alphanumeric either way.
    let mut labels = name.split('.');
    let reverse_domain = name.contains('.')
        && labels
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if reverse_domain && name.len() <= 255 {
        Ok(EventName::NoContextChange)
    } else {
        Err(bad())
    }
}

/// The context key conventionally used for a resource type (any case).
fn key_for(resource: &str) -> String {
    if resource.eq_ignore_ascii_case("imagingstudy") {
        "study".to_owned()
    } else if resource.eq_ignore_ascii_case("diagnosticreport") {
        "report".to_owned()
    } else {
        resource.to_ascii_lowercase()
    }
}

impl Decoder for FhircastDecoder {
    fn format(&self) -> Format {
        Format::Fhircast
    }

    fn decode(&self, msg: &RawMessage<'_>, props: &mut Properties) -> Result<Decoded, DecodeError> {
        let bytes = payload(msg)?;
        let wire: WireNotification<'_> = parse_typed(bytes)?;
        if let Text::Other = wire.id {
            return Err(DecodeError::invalid("id", "a string"));
        }
        let event = wire.event.ok_or_else(|| DecodeError::missing("event"))?;
        let name = req_text("event.hub.event", event.event.into_scalar())?;
        let meaning = classify(&name)?;
        let (open, resource) = match meaning {
            EventName::Open(r) => (true, Some(r)),
            EventName::Close(r) => (false, Some(r)),
            EventName::NoContextChange => (false, None),
        };
        props.insert_if_absent_with("hubEvent", || OwnedValue::String(name.to_string()));
        let session = self
            .sessions
            .session(&req_text("event.hub.topic", event.topic.into_scalar())?);

        let mut notes = Vec::new();
        let event_time = match wire.timestamp {
            Text::Str(s) => parse_event_time(&s),
            _ => None,
        }
        .unwrap_or_else(|| {
            notes.push(DecodeNote::LenientTimestamp);
            receive_time(msg)
        });

        let Some(resource) = resource else {
            notes.push(DecodeNote::Ignored);
            return Ok(Decoded {
                observations: Vec::new(),
                notes,
            });
        };
        let is_patient = resource.eq_ignore_ascii_case("patient");
        let entries = read_context(event.context.unwrap_or_default(), open)?;
        if open && entries.is_empty() {
            return Err(DecodeError::invalid(
                "event.context",
                "a non-empty list for an -open event",
            ));
        }
        // `entries` holds each key once (`read_context` checks that the context's keys are
        // unique). The anchor is the entry whose resource is of the event's type.
        let anchor = entries.iter().position(|e| {
            e.resource
                .as_ref()
                .is_some_and(|(t, _)| t.eq_ignore_ascii_case(resource))
        });
        let anchor_ref = anchor.and_then(|i| entries[i].reference());
        let anchor_key =
            anchor.map_or_else(|| Cow::Owned(key_for(resource)), |i| entries[i].key.clone());
        let mut changes: Vec<(Cow<'_, str>, Option<String>, Scope)> =
            Vec::with_capacity(entries.len() + 3);
        if open {
            // Every key of the context is set under the anchor, so that its close closes them.
            let scope = anchor_ref.map_or(Scope::Unscoped, Scope::SetUnder);
            for entry in entries {
                let value = entry.reference();
                changes.push((entry.key, value, scope.clone()));
            }
            if is_patient {
                add_absent(&mut changes, PATIENT_DEPENDENT, || scope.clone());
            }
        } else if is_patient {
            // Every key of the context closes, the anchor among them or beside them, and every
            // key that hangs off the patient.
            for entry in entries {
                changes.push((entry.key, None, Scope::Unscoped));
            }
            add_absent(&mut changes, [anchor_key], || Scope::Unscoped);
            add_absent(&mut changes, PATIENT_DEPENDENT, || Scope::Unscoped);
        } else {
            // The anchor closes; so does every other key its matching open set, whether the close
            // lists it (often only to identify the anchor) or not: the keys of the close and the
            // usual associated keys, each only where that open set it. The patient stays.
            changes.push((anchor_key.clone(), None, Scope::Unscoped));
            if let Some(anchor_ref) = anchor_ref {
                let only = || Scope::OnlyUnder(anchor_ref.clone());
                for entry in entries {
                    let patient = entry.key == "patient"
                        || entry
                            .resource
                            .as_ref()
                            .is_some_and(|(t, _)| t.eq_ignore_ascii_case("patient"));
                    if entry.key != anchor_key && !patient {
                        changes.push((entry.key, None, only()));
                    }
                }
                add_absent(&mut changes, PATIENT_DEPENDENT, only);
            }
        }
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let observations = changes
            .into_iter()
            .map(|(key, value, scope)| {
                let mut entity_id = String::with_capacity(session.len() + 1 + key.len());
                entity_id.push_str(&session);
                entity_id.push('/');
                entity_id.push_str(&key);
                Observation {
                    event_type: Cow::Borrowed("ContextChangeEvent"),
                    entity_type: Cow::Borrowed("FhircastSession"),
                    entity_id,
                    kind: ObservationKind::Snapshot,
                    attributes: Attributes::one(key.into_owned(), value),
                    captured: BTreeMap::new(),
                    event_time,
                    changed_by: None,
                    version: None,
                    scope,
                }
            })
            .collect();
        Ok(Decoded {
            observations,
            notes,
        })
    }
}

/// Adds a NULL for each of `keys` that `changes` does not hold yet.
fn add_absent<'a, K: Into<Cow<'a, str>>>(
    changes: &mut Vec<(Cow<'a, str>, Option<String>, Scope)>,
    keys: impl IntoIterator<Item = K>,
    scope: impl Fn() -> Scope,
) {
    for key in keys {
        let key = key.into();
        if !changes.iter().any(|(k, _, _)| *k == key) {
            changes.push((key, None, scope()));
        }
    }
}

struct ContextEntry<'a> {
    key: Cow<'a, str>,
    /// Resource type as written (compare it ignoring ASCII case) and id, when a resource was
    /// given.
    resource: Option<(Cow<'a, str>, Cow<'a, str>)>,
}

impl ContextEntry<'_> {
    /// `ResourceType/id`, when a resource was given.
    fn reference(&self) -> Option<String> {
        self.resource.as_ref().map(|(kind, id)| {
            let mut reference = String::with_capacity(kind.len() + 1 + id.len());
            reference.push_str(kind);
            reference.push('/');
            reference.push_str(id);
            reference
        })
    }
}

/// A required text field of context entry `i`; the field's name is only built for an error.
fn entry_text<'a>(i: usize, name: &str, value: Text<'a>) -> Result<Cow<'a, str>, DecodeError> {
    match value {
        Text::Str(s) if !is_blank(&s) => Ok(s),
        other => req_text(&entry_field(i, name), other.into_scalar()),
    }
}

fn entry_field(i: usize, name: &str) -> String {
    format!("event.context[{i}].{name}")
}

/// A context key: a field name without dots, i.e. `is_field_name(key) && !key.contains('.')` in
/// one pass over the bytes.
fn is_context_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn read_context<'a>(
    wire: Vec<WireContext<'a>>,
    resource_required: bool,
) -> Result<Vec<ContextEntry<'a>>, DecodeError> {
    let mut entries: Vec<ContextEntry<'a>> = Vec::with_capacity(wire.len());
    for (i, entry) in wire.into_iter().enumerate() {
        let key = entry_text(i, "key", entry.key)?;
        if !is_context_key(&key) {
            return Err(DecodeError::invalid(
                &entry_field(i, "key"),
                "a context key name (letters, digits, '_' or '-')",
            ));
        }
        if entries.iter().any(|e| e.key == key) {
            return Err(DecodeError::new(
                DecodeErrorKind::InvalidField,
                format!("field `{}` repeats an earlier key", entry_field(i, "key")),
            ));
        }
        let resource = match entry.resource {
            None if resource_required => {
                return Err(DecodeError::missing(&entry_field(i, "resource")))
            }
            None => None,
            Some(r) => {
                let kind = entry_text(i, "resource.resourceType", r.resource_type)?;
                if !kind.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(DecodeError::invalid(
                        &entry_field(i, "resource.resourceType"),
                        "a FHIR resource type name",
                    ));
                }
                let id = entry_text(i, "resource.id", r.id)?;
                Some((kind, id))
            }
        };
        entries.push(ContextEntry { key, resource });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::testing::{fixture, msg};

    const TOPIC: &str = "2e9f1f7c-6a1b-4b8e-9c1d-session";

    fn decode(name: &str) -> Result<Decoded, DecodeError> {
        let bytes = fixture("fhircast", name);
        FhircastDecoder::default().decode(&msg("fhircast.events", &bytes), &mut Properties::new())
    }

    #[test]
    fn session_ids_hide_the_topic() {
        let unkeyed = SessionIds::default();
        let keyed = SessionIds::new(b"k1", [("known-topic".to_owned(), "radiology".to_owned())]);
        let id = keyed.session(TOPIC);
        assert!(
            id.starts_with("topic:") && id.len() == 6 + TOPIC_HASH_HEX,
            "{id}"
        );
        assert!(!id.contains(TOPIC));
        assert_eq!(id, keyed.session(TOPIC), "stable");
        assert_ne!(id, keyed.session("another-topic"));
        assert_ne!(id, unkeyed.session(TOPIC), "the key matters");
        assert_ne!(id, SessionIds::new(b"k2", []).session(TOPIC));
        assert_eq!(keyed.session("known-topic"), "subscription:radiology");
        assert_eq!(
            keyed.rekey("known-topic/patient").as_deref(),
            Some("subscription:radiology/patient")
        );
        assert_eq!(
            keyed.rekey("https://hub/a/b/patient"),
            Some(format!("{}/patient", keyed.session("https://hub/a/b")))
        );
        assert_eq!(keyed.rekey("no-slash"), None);
        let debug = format!("{keyed:?}");
        assert!(
            !debug.contains("k1") && !debug.contains("known-topic"),
            "{debug}"
        );
    }

    fn context(d: &Decoded) -> Vec<(String, Option<&str>)> {
        d.observations
            .iter()
            .map(|o| {
                assert_eq!(o.kind, ObservationKind::Snapshot);
                assert_eq!(o.entity_type, "FhircastSession");
                let (key, value) = o.attributes.iter().next().unwrap();
                let session = SessionIds::default().session(TOPIC);
                assert_eq!(o.entity_id, format!("{session}/{key}"));
                (key.clone(), value.as_deref())
            })
            .collect()
    }

    #[test]
    fn patient_open_replaces_the_patient_context() {
        let d = decode("patient_open").unwrap();
        assert!(d.notes.is_empty());
        assert_eq!(
            context(&d),
            [
                ("encounter".to_owned(), None),
                (
                    "patient".to_owned(),
                    Some("Patient/ewUbXT9RWEbSj5wPEdgRaBw3")
                ),
                ("report".to_owned(), None),
                ("study".to_owned(), None),
            ]
        );
        assert_eq!(
            d.observations[0].event_time.to_rfc3339(),
            "2018-01-08T01:37:05.140+00:00"
        );
    }

    fn scopes(d: &Decoded) -> Vec<(&str, &Scope)> {
        d.observations
            .iter()
            .map(|o| (o.attributes.keys().next().unwrap().as_str(), &o.scope))
            .collect()
    }

    #[test]
    fn closes_set_null() {
        let d = decode("patient_close").unwrap();
        assert!(context(&d).iter().all(|(_, v)| v.is_none()));
        assert_eq!(d.observations.len(), 4);
        assert!(d.observations.iter().all(|o| o.scope == Scope::Unscoped));
        // A study close (any case) closes the study, and the keys that hang off a patient where
        // the study's open set them; the patient stays open.
        let d = decode("imagingstudy_close").unwrap();
        assert!(context(&d).iter().all(|(_, v)| v.is_none()));
        let study = || Scope::OnlyUnder("ImagingStudy/8i7tbu6fby5ftfbku6fniuf".into());
        assert_eq!(
            scopes(&d),
            [
                ("encounter", &study()),
                ("report", &study()),
                ("study", &Scope::Unscoped)
            ]
        );
    }

    #[test]
    fn an_anchor_open_sets_its_keys_under_the_anchor_and_its_close_closes_them() {
        let report = || "DiagnosticReport/40012366".to_owned();
        let d = decode("diagnosticreport_open").unwrap();
        assert_eq!(
            context(&d),
            [
                (
                    "patient".to_owned(),
                    Some("Patient/ewUbXT9RWEbSj5wPEdgRaBw3")
                ),
                ("report".to_owned(), Some("DiagnosticReport/40012366")),
                (
                    "study".to_owned(),
                    Some("ImagingStudy/8i7tbu6fby5ftfbku6fniuf")
                ),
            ]
        );
        assert!(d
            .observations
            .iter()
            .all(|o| o.scope == Scope::SetUnder(report())));
        // The close lists the patient and the study to identify the report: the study closes
        // where the report's open set it, the patient is not touched.
        let d = decode("diagnosticreport_close").unwrap();
        assert!(context(&d).iter().all(|(_, v)| v.is_none()));
        let only = Scope::OnlyUnder(report());
        assert_eq!(
            scopes(&d),
            [
                ("encounter", &only),
                ("report", &Scope::Unscoped),
                ("study", &only)
            ]
        );
    }

    #[test]
    fn study_open_sets_every_key_of_its_context() {
        let d = decode("imagingstudy_open").unwrap();
        assert_eq!(
            context(&d),
            [
                (
                    "patient".to_owned(),
                    Some("Patient/ewUbXT9RWEbSj5wPEdgRaBw3")
                ),
                (
                    "study".to_owned(),
                    Some("ImagingStudy/8i7tbu6fby5ftfbku6fniuf")
                ),
            ]
        );
    }

    #[test]
    fn events_that_do_not_change_context_are_ignored() {
        for name in ["diagnosticreport_update", "proprietary_event"] {
            let d = decode(name).unwrap();
            assert!(d.observations.is_empty(), "{name}");
            assert_eq!(d.notes, vec![DecodeNote::Ignored], "{name}");
        }
    }

    #[test]
    fn malformed_timestamps_fall_back_to_the_receive_time() {
        let d = decode("malformed_timestamp").unwrap();
        assert_eq!(d.notes, vec![DecodeNote::LenientTimestamp]);
        assert_eq!(
            d.observations[1].event_time.timestamp_millis(),
            1_704_067_200_000
        );
    }

    #[test]
    fn event_name_grammar() {
        for ok in [
            "Patient-open",
            "patient-OPEN",
            "ImagingStudy-close",
            "*-*",
            "Encounter-*",
            "DiagnosticReport-select",
            "DiagnosticReport-update",
            "org.example.patient_transmogrify",
            "SyncError",
            "heartbeat",
        ] {
            assert!(classify(ok).is_ok(), "{ok}");
        }
        for bad in [
            "Patient",
            "Patient-",
            "-open",
            "Patient-open-now",
            "Pat1ent-open",
            "Patient-reopen",
            "org..example",
            "transmogrify",
            "",
        ] {
            assert!(classify(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn context_keys_are_field_names_without_dots(
            key in "[a-zA-Z0-9_.\\- \u{e9}]{0,66}|[a-z]{62,66}|[a-z]{0,66}[.\u{e9} ][a-z]{0,3}",
        ) {
            let expected = crate::formats::wire::is_field_name(&key) && !key.contains('.');
            proptest::prop_assert_eq!(is_context_key(&key), expected);
        }
    }

    #[test]
    fn precise_reasons() {
        for (name, expected) in [
            ("bad_event_name", "`event.hub.event` must be"),
            ("bad_event_action", "`event.hub.event` must be"),
            (
                "bad_open_without_context",
                "`event.context` must be a non-empty list",
            ),
            ("bad_missing_topic", "`event.hub.topic` is missing"),
            (
                "bad_resource_without_id",
                "`event.context[0].resource.id` is missing",
            ),
            ("bad_context_not_list", "`event.context` has the wrong type"),
        ] {
            let e = decode(name).unwrap_err().to_string();
            assert!(e.contains(expected), "{name}: {e}");
        }
    }
}
