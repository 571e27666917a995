//! Danish eHealth broker events (docs/architecture.md, "Danish eHealth"): EHealthContextEvent
//! on `[profile].[context]`, EHealthReferenceEvent on `[profile].[element]` and
//! EHealthSimpleEvent on `[profile]`.
//!
//! The message properties (`messageType`, `resourceReference`, …) usually arrive as Kafka headers,
//! which the pipeline has put into the properties before decoding; the same names in the JSON
//! body only fill the gaps, and every field is then read back from the properties, so a header
//! always wins over the body.
//!
//! Mapping: entity type from the FHIR profile (`resourceProfile`, else the topic's first
//! segment; a URL profile → its last path segment; option `entity_types` renames), entity id =
//! `resourceReference`, version = `resourceVersion`. Context events: attribute = the context
//! (only `contexts`, default `["status"]`), value = the body's `status`, else a `status` header
//! (any case), else unknown (a FHIR look-up may learn it). Reference events give a
//! `ReferenceChangeEvent` only with `references = true`; simple events give attribute
//! `lifecycle` only with `lifecycle = true`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use message_selector::OwnedValue;
use serde::Deserialize;

use super::wire::{is_blank, opt_text, parse_typed, receive_time, OptionTable, Scalar};
use super::{payload, DecodeError, DecodeErrorKind, DecodeNote, Decoded};
use super::{Decoder, Format};
use super::{FormatConfigError, RawMessage};
use crate::model::{Attributes, Observation, ObservationKind, Properties, Scope};

/// The broker's documented message properties, lifted from the body when no header carries them.
const LIFTED: [&str; 10] = [
    "messageType",
    "messageVersion",
    "eventType",
    "resourceReference",
    "resourceVersion",
    "context",
    "resourceElement",
    "messageClass",
    "patientReference",
    "resourceProfile",
];

/// Decoder for the `ehealth-dk` format.
///
/// Options: `contexts` (list, default `["status"]`), `references` (bool, default false),
/// `lifecycle` (bool, default false), `entity_types` (table profile → entity type).
#[derive(Debug, Clone)]
pub struct EhealthDkDecoder {
    contexts: Vec<String>,
    references: bool,
    lifecycle: bool,
    entity_types: BTreeMap<String, String>,
}

impl Default for EhealthDkDecoder {
    fn default() -> Self {
        Self {
            contexts: vec!["status".to_owned()],
            references: false,
            lifecycle: false,
            entity_types: BTreeMap::new(),
        }
    }
}

/// A status context event that carried no status: what a FHIR look-up needs to learn it.
///
/// The look-up reads `{resource_reference}/_history/{resource_version}` and, with the status it
/// finds, [`StatusLookup::into_observation`] builds the observation the message could not give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLookup {
    /// Absolute URL of the resource.
    pub resource_reference: String,
    /// Version of the resource after the change, when the message gave one.
    pub resource_version: Option<i64>,
    /// Entity type the observation will have.
    pub entity_type: String,
    /// Attribute (the context) the status belongs to.
    pub attribute: String,
    /// Created or Updated.
    pub kind: ObservationKind,
    /// When the message was received.
    pub event_time: chrono::DateTime<chrono::Utc>,
}

impl StatusLookup {
    /// The FHIR `vread` URL of the version to read (the current resource without a version).
    pub(crate) fn history_url(&self) -> String {
        match self.resource_version {
            Some(v) => format!(
                "{}/_history/{v}",
                self.resource_reference.trim_end_matches('/')
            ),
            None => self.resource_reference.clone(),
        }
    }

    /// The observation the message would have given had it carried `status`.
    pub(crate) fn into_observation(self, status: String) -> Observation {
        Observation {
            event_type: Cow::Borrowed(STATUS_EVENT),
            entity_type: Cow::Owned(self.entity_type),
            entity_id: self.resource_reference,
            kind: self.kind,
            attributes: Attributes::one(self.attribute, Some(status)),
            captured: BTreeMap::new(),
            event_time: self.event_time,
            changed_by: None,
            version: self.resource_version,
            scope: Scope::Unscoped,
        }
    }
}

const STATUS_EVENT: &str = "StatusChangeEvent";

impl EhealthDkDecoder {
    /// Builds the decoder from a topic rule's `[options]`.
    pub(crate) fn from_options(options: &toml::Table) -> Result<Self, FormatConfigError> {
        let table = OptionTable::new(
            "ehealth-dk",
            options,
            &["contexts", "references", "lifecycle", "entity_types"],
        )?;
        let contexts = table.strings("contexts", &["status"])?;
        if contexts.is_empty() {
            return Err(FormatConfigError(
                "option `contexts` of format `ehealth-dk` must name at least one context".into(),
            ));
        }
        Ok(Self {
            contexts,
            references: table.bool("references", false)?,
            lifecycle: table.bool("lifecycle", false)?,
            entity_types: table.string_map("entity_types")?,
        })
    }

    /// Decodes like [`Decoder::decode`] and also returns, for a status context event without a
    /// status, what a FHIR look-up needs. This is the extension point for that look-up.
    pub(crate) fn decode_with_lookup(
        &self,
        msg: &RawMessage<'_>,
        props: &mut Properties,
    ) -> Result<(Decoded, Option<StatusLookup>), DecodeError> {
        let bytes = payload(msg)?;
        let wire: WireMessage<'_> = parse_typed(bytes)?;
        let status = opt_text("status", wire.status)?;
        let references = match wire.references {
            None => None,
            Some(refs) => Some(
                refs.into_iter()
                    .enumerate()
                    .map(|(i, r)| match r {
                        Scalar::Str(s) if !s.is_empty() => Ok(s.into_owned()),
                        _ => Err(DecodeError::invalid(
                            &format!("references[{i}]"),
                            "a non-empty string",
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        for (name, value) in LIFTED.into_iter().zip(wire.lifted) {
            let text = match value {
                // Some producers write the version as a JSON number.
                Some(Scalar::Number(n)) => Some(Cow::Owned(n)),
                other => opt_text(name, other)?,
            };
            if let Some(text) = text {
                props.insert_if_absent_with(name, || OwnedValue::String(text.into_owned()));
            }
        }
        // From here on every field is read back from the properties, borrowed.
        let props: &Properties = props;
        let message_type =
            prop_text(props, "messageType")?.ok_or_else(|| DecodeError::missing("messageType"))?;
        let (profile, suffix) = split_topic(msg.topic);
        let profile = prop_text(props, "resourceProfile")?.unwrap_or(profile);
        let header = Header {
            entity_type: self.entity_type(profile),
            resource_reference: prop_text(props, "resourceReference")?
                .filter(|r| !is_blank(r))
                .ok_or_else(|| DecodeError::missing("resourceReference"))?,
            version: prop_version(props)?,
            event_type: prop_text(props, "eventType")?
                .ok_or_else(|| DecodeError::missing("eventType"))?,
            event_time: receive_time(msg),
        };
        match message_type {
            "EHealthContextEvent" => {
                let context = prop_text(props, "context")?
                    .or(suffix)
                    .ok_or_else(|| DecodeError::missing("context"))?;
                // A bridge that forwards the JMS message as headers may carry the status there,
                // with a stub body; the body's status wins.
                let status = match status {
                    Some(status) => Some(status),
                    None => header_status(props)?.map(Cow::Borrowed),
                };
                self.context_event(header, context, status)
            }
            "EHealthReferenceEvent" => {
                let element = prop_text(props, "resourceElement")?
                    .or(suffix)
                    .ok_or_else(|| DecodeError::missing("resourceElement"))?;
                let references = references.ok_or_else(|| DecodeError::missing("references"))?;
                self.reference_event(header, element, references)
                    .map(|d| (d, None))
            }
            "EHealthSimpleEvent" => self.simple_event(header).map(|d| (d, None)),
            _ => Err(DecodeError::new(
                DecodeErrorKind::UnsupportedType,
                "messageType is not one of EHealthContextEvent, EHealthReferenceEvent, EHealthSimpleEvent",
            )),
        }
    }

    fn entity_type(&self, profile: &str) -> String {
        if let Some(mapped) = self.entity_types.get(profile) {
            return mapped.clone();
        }
        // A canonical URL (possibly `|version`-qualified) names the profile in its last segment.
        let bare = profile.split('|').next().unwrap_or(profile);
        let short = bare
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(bare);
        self.entity_types
            .get(short)
            .cloned()
            .unwrap_or_else(|| short.to_owned())
    }

    fn context_event(
        &self,
        h: Header<'_>,
        context: &str,
        status: Option<Cow<'_, str>>,
    ) -> Result<(Decoded, Option<StatusLookup>), DecodeError> {
        let kind = lifecycle_kind(h.event_type)?;
        if !self.contexts.iter().any(|c| c == context) {
            return Ok((ignored(), None));
        }
        let value = match (kind, status) {
            (ObservationKind::Deleted, _) => None,
            (_, Some(status)) => Some(status.into_owned()),
            (kind, None) => {
                let lookup = StatusLookup {
                    resource_reference: h.resource_reference.to_owned(),
                    resource_version: h.version,
                    entity_type: h.entity_type,
                    attribute: context.to_owned(),
                    kind,
                    event_time: h.event_time,
                };
                let decoded = Decoded {
                    observations: Vec::new(),
                    notes: vec![DecodeNote::MissingStatus],
                };
                return Ok((decoded, Some(lookup)));
            }
        };
        let obs = h.observation(STATUS_EVENT, kind, context.to_owned(), value);
        Ok((single(obs), None))
    }

    fn reference_event(
        &self,
        h: Header<'_>,
        element: &str,
        references: Vec<String>,
    ) -> Result<Decoded, DecodeError> {
        let change = match h.event_type {
            "reference_added" => "added",
            "reference_removed" => "removed",
            _ => {
                return Err(DecodeError::invalid(
                    "eventType",
                    "reference_added or reference_removed for an EHealthReferenceEvent",
                ))
            }
        };
        if !self.references {
            return Ok(ignored());
        }
        // The value is the whole change as JSON text, so that adding a reference again after
        // removing it differs from the state and is seen as a change.
        let value = serde_json::json!({ change: references }).to_string();
        let obs = h.observation(
            "ReferenceChangeEvent",
            ObservationKind::Updated,
            element.to_owned(),
            Some(value),
        );
        Ok(single(obs))
    }

    fn simple_event(&self, h: Header<'_>) -> Result<Decoded, DecodeError> {
        let kind = lifecycle_kind(h.event_type)?;
        if !self.lifecycle {
            return Ok(ignored());
        }
        let value = h.event_type.to_owned();
        let obs = h.observation(
            "LifecycleChangeEvent",
            kind,
            "lifecycle".to_owned(),
            Some(value),
        );
        Ok(single(obs))
    }
}

impl Decoder for EhealthDkDecoder {
    fn format(&self) -> Format {
        Format::EhealthDk
    }

    fn decode(&self, msg: &RawMessage<'_>, props: &mut Properties) -> Result<Decoded, DecodeError> {
        EhealthDkDecoder::decode_with_lookup(self, msg, props).map(|(d, _)| d)
    }

    fn decode_with_lookup(
        &self,
        msg: &RawMessage<'_>,
        props: &mut Properties,
    ) -> Result<(Decoded, Option<StatusLookup>), DecodeError> {
        EhealthDkDecoder::decode_with_lookup(self, msg, props)
    }
}

/// What every eHealth message says about its resource (text borrowed from the properties).
struct Header<'p> {
    entity_type: String,
    resource_reference: &'p str,
    version: Option<i64>,
    event_type: &'p str,
    event_time: chrono::DateTime<chrono::Utc>,
}

impl Header<'_> {
    fn observation(
        self,
        event_type: &'static str,
        kind: ObservationKind,
        attribute: String,
        value: Option<String>,
    ) -> Observation {
        Observation {
            event_type: Cow::Borrowed(event_type),
            entity_type: Cow::Owned(self.entity_type),
            entity_id: self.resource_reference.to_owned(),
            kind,
            attributes: Attributes::one(attribute, value),
            captured: BTreeMap::new(),
            event_time: self.event_time,
            changed_by: None,
            version: self.version,
            scope: Scope::Unscoped,
        }
    }
}

fn single(obs: Observation) -> Decoded {
    Decoded {
        observations: vec![obs],
        notes: Vec::new(),
    }
}

fn ignored() -> Decoded {
    Decoded {
        observations: Vec::new(),
        notes: vec![DecodeNote::Ignored],
    }
}

fn lifecycle_kind(event_type: &str) -> Result<ObservationKind, DecodeError> {
    match event_type {
        "created" => Ok(ObservationKind::Created),
        "updated" => Ok(ObservationKind::Updated),
        "deleted" => Ok(ObservationKind::Deleted),
        _ => Err(DecodeError::invalid(
            "eventType",
            "one of created, updated, deleted",
        )),
    }
}

/// `[profile].[context]` → (profile, context).
fn split_topic(topic: &str) -> (&str, Option<&str>) {
    match topic.split_once('.') {
        Some((profile, rest)) if !rest.is_empty() => (profile, Some(rest)),
        _ => (topic.trim_end_matches('.'), None),
    }
}

fn prop_text<'p>(props: &'p Properties, name: &str) -> Result<Option<&'p str>, DecodeError> {
    match props.get_owned(name) {
        None => Ok(None),
        Some(OwnedValue::String(s)) if s.is_empty() => Ok(None),
        Some(OwnedValue::String(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::invalid(name, "a string")),
    }
}

/// The `status` header, in that spelling or any other case of it (`Status`, `STATUS`).
fn header_status(props: &Properties) -> Result<Option<&str>, DecodeError> {
    if props.get_owned("status").is_some() {
        return prop_text(props, "status");
    }
    match props
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("status"))
    {
        Some((name, _)) => prop_text(props, name),
        None => Ok(None),
    }
}

fn prop_version(props: &Properties) -> Result<Option<i64>, DecodeError> {
    match props.get_owned("resourceVersion") {
        None => Ok(None),
        Some(OwnedValue::Long(v)) => Ok(Some(*v)),
        Some(OwnedValue::String(s)) if s.is_empty() => Ok(None),
        Some(OwnedValue::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| DecodeError::invalid("resourceVersion", "an integer")),
        Some(_) => Err(DecodeError::invalid("resourceVersion", "an integer")),
    }
}

/// The JSON body. Listed properties are kept as lenient scalars so that their type errors name
/// the field.
struct WireMessage<'a> {
    lifted: [Option<Scalar<'a>>; 10],
    status: Option<Scalar<'a>>,
    references: Option<Vec<Scalar<'a>>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for WireMessage<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Default, Deserialize)]
        #[serde(rename_all = "camelCase", default, bound(deserialize = "'de: 'a"))]
        struct Body<'a> {
            message_type: Option<Scalar<'a>>,
            message_version: Option<Scalar<'a>>,
            event_type: Option<Scalar<'a>>,
            resource_reference: Option<Scalar<'a>>,
            resource_version: Option<Scalar<'a>>,
            context: Option<Scalar<'a>>,
            resource_element: Option<Scalar<'a>>,
            message_class: Option<Scalar<'a>>,
            patient_reference: Option<Scalar<'a>>,
            resource_profile: Option<Scalar<'a>>,
            status: Option<Scalar<'a>>,
            references: Option<Vec<Scalar<'a>>>,
        }
        let b = Body::deserialize(d)?;
        Ok(WireMessage {
            // Same order as LIFTED.
            lifted: [
                b.message_type,
                b.message_version,
                b.event_type,
                b.resource_reference,
                b.resource_version,
                b.context,
                b.resource_element,
                b.message_class,
                b.patient_reference,
                b.resource_profile,
            ],
            status: b.status,
            references: b.references,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::testing::{fixture, msg};

    fn decode_with(
        options: &str,
        topic: &str,
        name: &str,
        props: &mut Properties,
    ) -> Result<(Decoded, Option<StatusLookup>), DecodeError> {
        let decoder = EhealthDkDecoder::from_options(&toml::from_str(options).unwrap()).unwrap();
        let bytes = fixture("ehealth-dk", name);
        decoder.decode_with_lookup(&msg(topic, &bytes), props)
    }

    fn decode(name: &str) -> Result<Decoded, DecodeError> {
        decode_with("", "ehealth-careplan.status", name, &mut Properties::new()).map(|(d, _)| d)
    }

    #[test]
    fn status_context_event_maps_profile_reference_status_and_version() {
        let mut props = Properties::new();
        let (d, lookup) =
            decode_with("", "ehealth-careplan.status", "context_updated", &mut props).unwrap();
        assert!(lookup.is_none());
        let o = &d.observations[0];
        assert_eq!(o.entity_type, "ehealth-careplan");
        assert_eq!(
            o.entity_id,
            "https://cp.ehealth.sundhed.dk/fhir/CarePlan/1234"
        );
        assert_eq!(o.attributes["status"].as_deref(), Some("active"));
        assert_eq!(o.version, Some(7));
        assert_eq!(o.kind, ObservationKind::Updated);
        assert_eq!(o.event_time.timestamp_millis(), 1_704_067_200_000);
        for name in LIFTED.iter().filter(|n| **n != "resourceElement") {
            assert!(props.get_owned(name).is_some(), "{name} not lifted");
        }
        assert_eq!(props.get_str("messageVersion"), Some("1.0"));
    }

    #[test]
    fn a_status_header_stands_in_for_a_missing_body_status() {
        for name in ["status", "Status", "STATUS"] {
            let mut props = Properties::new();
            props.insert_str(name, "on-hold");
            let (d, lookup) = decode_with(
                "",
                "ehealth-careplan.status",
                "context_missing_status",
                &mut props,
            )
            .unwrap();
            assert_eq!(lookup, None, "{name}");
            assert_eq!(
                d.observations[0].attributes["status"].as_deref(),
                Some("on-hold")
            );
        }
        // The body wins when both carry one.
        let mut props = Properties::new();
        props.insert_str("status", "on-hold");
        let (d, _) =
            decode_with("", "ehealth-careplan.status", "context_updated", &mut props).unwrap();
        assert_eq!(
            d.observations[0].attributes["status"].as_deref(),
            Some("active")
        );
        // Neither: the FHIR look-up, as before.
        let (d, lookup) = decode_with(
            "",
            "ehealth-careplan.status",
            "context_missing_status",
            &mut Properties::new(),
        )
        .unwrap();
        assert!(d.observations.is_empty());
        assert_eq!(d.notes, vec![DecodeNote::MissingStatus]);
        assert!(lookup.is_some());
    }

    #[test]
    fn kinds_follow_event_type() {
        assert_eq!(
            decode("context_created").unwrap().observations[0].kind,
            ObservationKind::Created
        );
        let deleted = decode("context_deleted").unwrap();
        assert_eq!(deleted.observations[0].kind, ObservationKind::Deleted);
        assert_eq!(deleted.observations[0].attributes["status"], None);
    }

    #[test]
    fn headers_win_over_the_body_and_name_the_profile() {
        let mut props = Properties::new();
        props.insert_str(
            "resourceProfile",
            "http://ehealth.sundhed.dk/fhir/StructureDefinition/ehealth-episodeofcare|1.2",
        );
        props.insert("resourceVersion".to_owned(), OwnedValue::Long(40));
        props.insert_str("messageType", "EHealthContextEvent");
        let (d, _) = decode_with(
            "[entity_types]\nehealth-episodeofcare = \"EpisodeOfCare\"",
            "x.status",
            "context_updated",
            &mut props,
        )
        .unwrap();
        assert_eq!(d.observations[0].entity_type, "EpisodeOfCare");
        assert_eq!(d.observations[0].version, Some(40));
        assert_eq!(
            props.get_owned("resourceVersion"),
            Some(&OwnedValue::Long(40))
        );
    }

    #[test]
    fn profile_and_context_fall_back_to_the_topic() {
        let (d, _) = decode_with(
            "",
            "ehealth-servicerequest.status",
            "context_minimal",
            &mut Properties::new(),
        )
        .unwrap();
        let o = &d.observations[0];
        assert_eq!(o.entity_type, "ehealth-servicerequest");
        assert_eq!(o.attributes["status"].as_deref(), Some("completed"));
    }

    #[test]
    fn missing_status_is_noted_with_what_a_lookup_needs() {
        let (d, lookup) = decode_with(
            "",
            "ehealth-careplan.status",
            "context_missing_status",
            &mut Properties::new(),
        )
        .unwrap();
        assert!(d.observations.is_empty());
        assert_eq!(d.notes, vec![DecodeNote::MissingStatus]);
        let lookup = lookup.unwrap();
        assert_eq!(
            lookup.history_url(),
            "https://cp.ehealth.sundhed.dk/fhir/CarePlan/1234/_history/7"
        );
        let o = lookup.into_observation("on-hold".into());
        assert_eq!(o.attributes["status"].as_deref(), Some("on-hold"));
        assert_eq!(o.version, Some(7));
    }

    #[test]
    fn unwatched_contexts_references_and_simple_events_are_ignored_by_default() {
        for name in ["context_other_context", "reference_added", "simple_created"] {
            let d = decode(name).unwrap();
            assert!(d.observations.is_empty(), "{name}");
            assert_eq!(d.notes, vec![DecodeNote::Ignored], "{name}");
        }
        let (d, _) = decode_with(
            "contexts = [\"title\"]",
            "ehealth-careplan.title",
            "context_other_context",
            &mut Properties::new(),
        )
        .unwrap();
        assert_eq!(d.notes, vec![DecodeNote::MissingStatus]);
    }

    #[test]
    fn references_when_enabled() {
        let mut props = Properties::new();
        let (d, _) = decode_with(
            "references = true",
            "ehealth-careplan.careteam",
            "reference_removed",
            &mut props,
        )
        .unwrap();
        let o = &d.observations[0];
        assert_eq!(o.event_type, "ReferenceChangeEvent");
        assert_eq!(
            o.attributes["careTeam"].as_deref(),
            Some(r#"{"removed":["https://cp.ehealth.sundhed.dk/fhir/CareTeam/55"]}"#)
        );
        assert_eq!(o.version, Some(10));
        assert_eq!(props.get_str("resourceElement"), Some("careTeam"));
    }

    #[test]
    fn lifecycle_when_enabled() {
        for (name, kind) in [
            ("simple_created", ObservationKind::Created),
            ("simple_deleted", ObservationKind::Deleted),
        ] {
            let (d, _) = decode_with(
                "lifecycle = true",
                "ehealth-careplan",
                name,
                &mut Properties::new(),
            )
            .unwrap();
            assert_eq!(d.observations[0].kind, kind);
            assert!(d.observations[0].attributes.contains_key("lifecycle"));
        }
    }

    #[test]
    fn precise_reasons() {
        for (name, expected) in [
            ("bad_version", "`resourceVersion` must be an integer"),
            ("bad_event_type", "`eventType` must be one of created"),
            ("bad_no_reference", "`resourceReference` is missing"),
            ("bad_status_type", "`status` must be a string"),
            ("bad_message_type", "unsupported_type"),
            ("bad_reference_items", "`references[0]` must be"),
            (
                "bad_reference_event_type",
                "reference_added or reference_removed",
            ),
            ("bad_truncated", "invalid_encoding"),
        ] {
            let e = decode(name).unwrap_err().to_string();
            assert!(e.contains(expected), "{name}: {e}");
        }
    }

    #[test]
    fn options_are_checked() {
        for (options, expected) in [
            ("contexts = []", "at least one"),
            ("references = \"yes\"", "true or false"),
            ("entity_types = [1]", "table of strings"),
        ] {
            let e = EhealthDkDecoder::from_options(&toml::from_str(options).unwrap()).unwrap_err();
            assert!(e.0.contains(expected), "{options}: {e}");
        }
    }
}
