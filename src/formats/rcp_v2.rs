//! RCP v2 emulated events (docs/architecture.md, "RCP v2"): the envelope
//! `{group, namespace, uid, date, resource, type, target, data, metadata: {trace_id}}`.
//!
//! `resource` → entity type, `target` → entity id, `date` → event time, `type` → kind
//! (`created`/`create` → Created, so a new timeslot is a baseline; `updated`/`update` → Updated;
//! `deleted`/`delete` → Deleted). Resources in the option `lifecycle` (default `timeslots`) report
//! attribute `lifecycle` = the normalised type; resources in `status` (default `patient_calls`)
//! report attribute `status` = `data.status`. Any other resource is accepted and ignored with
//! [`DecodeNote::Ignored`]: the envelope says nothing about what its data means, and guessing
//! would store events nobody asked for; a topic opts a resource in through the options.

use std::borrow::Cow;
use std::collections::BTreeMap;

use message_selector::OwnedValue;
use serde::Deserialize;

use super::wire::{opt_text, parse_typed, req_text, OptionTable, Scalar};
use super::FormatConfigError;
use super::RawMessage;
use super::{payload, DecodeError, DecodeNote, Decoded, Decoder, Format};
use crate::model::{Attributes, Observation, ObservationKind, Properties, Scope};
use crate::time::parse_event_time;

/// Decoder for the `rcp-v2` format.
///
/// Options: `lifecycle` (resources tracked by lifecycle, default `["timeslots"]`), `status`
/// (resources whose `data.status` is tracked, default `["patient_calls"]`).
#[derive(Debug, Clone)]
pub struct RcpV2Decoder {
    lifecycle: Vec<String>,
    status: Vec<String>,
}

impl Default for RcpV2Decoder {
    fn default() -> Self {
        Self {
            lifecycle: vec!["timeslots".to_owned()],
            status: vec!["patient_calls".to_owned()],
        }
    }
}

impl RcpV2Decoder {
    /// Builds the decoder from a topic rule's `[options]`.
    pub(crate) fn from_options(options: &toml::Table) -> Result<Self, FormatConfigError> {
        let table = OptionTable::new("rcp-v2", options, &["lifecycle", "status"])?;
        Ok(Self {
            lifecycle: table.strings("lifecycle", &["timeslots"])?,
            status: table.strings("status", &["patient_calls"])?,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireEnvelope<'a> {
    group: Option<Scalar<'a>>,
    uid: Option<Scalar<'a>>,
    date: Option<Scalar<'a>>,
    resource: Option<Scalar<'a>>,
    #[serde(rename = "type")]
    kind: Option<Scalar<'a>>,
    target: Option<Scalar<'a>>,
    data: Option<WireData<'a>>,
    metadata: Option<WireMetadata<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireData<'a> {
    status: Option<Scalar<'a>>,
    updater_uid: Option<Scalar<'a>>,
    user_uid: Option<Scalar<'a>>,
    spec: Option<WireSpec<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireSpec<'a> {
    user_uid: Option<Scalar<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(default, bound(deserialize = "'de: 'a"))]
struct WireMetadata<'a> {
    trace_id: Option<Scalar<'a>>,
}

impl Decoder for RcpV2Decoder {
    fn format(&self) -> Format {
        Format::RcpV2
    }

    fn decode(&self, msg: &RawMessage<'_>, props: &mut Properties) -> Result<Decoded, DecodeError> {
        let bytes = payload(msg)?;
        let wire: WireEnvelope<'_> = parse_typed(bytes)?;
        let resource = req_text("resource", wire.resource)?;
        let type_text = req_text("type", wire.kind)?;
        let (kind, lifecycle) = match &*type_text {
            "created" | "create" => (ObservationKind::Created, "created"),
            "updated" | "update" => (ObservationKind::Updated, "updated"),
            "deleted" | "delete" => (ObservationKind::Deleted, "deleted"),
            _ => {
                return Err(DecodeError::invalid(
                    "type",
                    "one of created, updated, deleted (or create, update, delete)",
                ))
            }
        };
        let target = req_text("target", wire.target)?;
        let date = req_text("date", wire.date)?;
        let event_time = parse_event_time(&date)
            .ok_or_else(|| DecodeError::invalid("date", "an ISO 8601 date-time"))?;
        let (mut status, mut changed_by) = (None, None);
        if let Some(data) = wire.data {
            status = opt_text("data.status", data.status)?;
            let spec_user = match data.spec {
                Some(spec) => opt_text("data.spec.user_uid", spec.user_uid)?,
                None => None,
            };
            changed_by = opt_text("data.updater_uid", data.updater_uid)?
                .or(opt_text("data.user_uid", data.user_uid)?)
                .or(spec_user);
        }
        for (name, value) in [
            ("group", opt_text("group", wire.group)?),
            ("uid", opt_text("uid", wire.uid)?),
            (
                "trace_id",
                match wire.metadata {
                    Some(m) => opt_text("metadata.trace_id", m.trace_id)?,
                    None => None,
                },
            ),
        ] {
            if let Some(value) = value {
                props.insert_if_absent(name, OwnedValue::String(value.into_owned()));
            }
        }
        props.insert_if_absent("resource", OwnedValue::String(resource.to_string()));
        props.insert_if_absent("type", OwnedValue::String(type_text.into_owned()));

        let (event_type, attribute, value) = if self.lifecycle.iter().any(|r| *r == resource) {
            (
                "LifecycleChangeEvent",
                "lifecycle",
                Some(lifecycle.to_owned()),
            )
        } else if self.status.iter().any(|r| *r == resource) {
            let value = match (kind, status) {
                (ObservationKind::Deleted, _) => None,
                (_, Some(s)) => Some(s.into_owned()),
                (_, None) => return Err(DecodeError::missing("data.status")),
            };
            ("StatusChangeEvent", "status", value)
        } else {
            return Ok(Decoded {
                observations: Vec::new(),
                notes: vec![DecodeNote::Ignored],
            });
        };
        Ok(Decoded {
            observations: vec![Observation {
                event_type: Cow::Borrowed(event_type),
                entity_type: Cow::Owned(resource.into_owned()),
                entity_id: target.into_owned(),
                kind,
                attributes: Attributes::one(attribute.to_owned(), value),
                captured: BTreeMap::new(),
                event_time,
                changed_by: changed_by.map(|c| c.into_owned()),
                version: None,
                scope: Scope::Unscoped,
            }],
            notes: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::testing::{fixture, msg};

    fn decode(name: &str, props: &mut Properties) -> Result<Decoded, DecodeError> {
        let bytes = fixture("rcp-v2", name);
        RcpV2Decoder::default().decode(&msg("rcp-v2.events", &bytes), props)
    }

    fn one(name: &str) -> Observation {
        let mut d = decode(name, &mut Properties::new()).unwrap();
        assert_eq!(d.observations.len(), 1, "{name}");
        d.observations.remove(0)
    }

    #[test]
    fn timeslot_lifecycle() {
        let mut props = Properties::new();
        let d = decode("timeslot_created", &mut props).unwrap();
        let o = &d.observations[0];
        assert_eq!(
            (&*o.entity_type, o.entity_id.as_str()),
            ("timeslots", "ts-42")
        );
        assert_eq!(o.kind, ObservationKind::Created);
        assert_eq!(o.attributes["lifecycle"].as_deref(), Some("created"));
        assert_eq!(o.changed_by.as_deref(), Some("user-7"));
        assert_eq!(o.event_time.to_rfc3339(), "2024-03-01T10:15:30+00:00");
        for (name, value) in [
            ("trace_id", "trace-abc"),
            ("group", "rcp-v2"),
            ("resource", "timeslots"),
            ("type", "created"),
            ("uid", "ev-0001"),
        ] {
            assert_eq!(props.get_str(name), Some(value), "{name}");
        }

        let o = one("timeslot_updated");
        assert_eq!(o.kind, ObservationKind::Updated);
        assert_eq!(o.changed_by.as_deref(), Some("user-8"));
        assert_eq!(o.event_time.to_rfc3339(), "2024-03-01T10:00:00.123+00:00");

        let o = one("timeslot_update_spelling");
        assert_eq!(o.attributes["lifecycle"].as_deref(), Some("updated"));

        let o = one("timeslot_deleted");
        assert_eq!(o.kind, ObservationKind::Deleted);
        assert_eq!(o.changed_by, None);
    }

    #[test]
    fn patient_call_status() {
        let o = one("patient_call_updated");
        assert_eq!(o.entity_type, "patient_calls");
        assert_eq!(o.attributes["status"].as_deref(), Some("finished"));
        assert_eq!(o.kind, ObservationKind::Updated);
        assert_eq!(o.changed_by.as_deref(), Some("user-3"));
    }

    #[test]
    fn unknown_resources_are_ignored_unless_opted_in() {
        let d = decode("unknown_resource", &mut Properties::new()).unwrap();
        assert_eq!(d.notes, vec![DecodeNote::Ignored]);
        let decoder =
            RcpV2Decoder::from_options(&toml::from_str("lifecycle = [\"care_plans\"]").unwrap())
                .unwrap();
        let bytes = fixture("rcp-v2", "unknown_resource");
        let d = decoder
            .decode(&msg("rcp-v2.events", &bytes), &mut Properties::new())
            .unwrap();
        assert_eq!(
            d.observations[0].attributes["lifecycle"].as_deref(),
            Some("updated")
        );
    }

    #[test]
    fn precise_reasons() {
        for (name, expected) in [
            ("bad_date", "`date` must be an ISO 8601"),
            ("bad_type", "`type` must be one of"),
            ("bad_missing_target", "`target` is missing"),
            ("bad_data_type", "`data` has the wrong type"),
            ("bad_call_without_status", "`data.status` is missing"),
            ("bad_status_type", "`data.status` must be a string"),
            ("bad_not_json", "invalid_encoding"),
        ] {
            let e = decode(name, &mut Properties::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{name}: {e}");
        }
    }
}
