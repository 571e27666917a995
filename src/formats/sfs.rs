//! Smart Flow Sheet webhook events (docs/architecture.md, "Smart Flow Sheet"):
//! `{clinicApiKey, eventType, object}`.
//!
//! Mapping (all observations are Updated `StatusChangeEvent`s; SFS events carry no time, so the
//! event time is the Kafka timestamp):
//! - `hospitalization.discharged`: `Hospitalization` `hospitalizationId` (the EMR's id; else
//!   `id`), `status` = `discharged`.
//! - `hospitalizations.discharged`: the same for each item of `object.hospitalizations`;
//!   `object.id` there is the operation id and is never used as an entity id.
//! - `inventoryitems.imported`: `InventoryImport` `object.id` (the import operation), `status` =
//!   `object.status` when sent, else `imported`.
//! - `treatment.record_entered` / `treatments.records_entered` (items in `object.treatments`):
//!   `MedicalRecord` `treatmentGuid` (else `id`), `status` = the record's `status` when sent,
//!   else `removed` when `removed` is true, else `entered`; its `hospitalizationId` is captured.
//! - any other event type: accepted and ignored ([`DecodeNote::Ignored`]); SFS adds types.
//!
//! `clinicApiKey` is a secret: it is only compared (in constant time) with the option table
//! `clinics = { "<api key>" = "<clinic id>" }` to set property `clinicId`, and otherwise dropped.
//! The `/webhooks/sfs` bridge authenticates the key itself and produces the event without it,
//! with the clinic's id in a `clinicId` field instead; that field is used when no configured key
//! gives the clinic.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use message_selector::OwnedValue;
use serde::Deserialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::wire::{opt_text, parse_typed, receive_time, req_text, OptionTable, Scalar};
use super::FormatConfigError;
use super::RawMessage;
use super::{payload, DecodeError, DecodeNote, Decoded, Decoder, Format};
use crate::model::{Attributes, Observation, ObservationKind, Properties, Scope};

/// Decoder for the `sfs` format.
///
/// Options: `clinics` (table API key → clinic id).
#[derive(Clone, Default)]
pub struct SfsDecoder {
    clinics: Vec<(Vec<u8>, String)>,
}

impl fmt::Debug for SfsDecoder {
    // The clinic table holds API keys: show only how many there are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SfsDecoder")
            .field("clinics", &self.clinics.len())
            .finish()
    }
}

impl SfsDecoder {
    /// Builds the decoder from a topic rule's `[options]`.
    pub(crate) fn from_options(options: &toml::Table) -> Result<Self, FormatConfigError> {
        let table = OptionTable::new("sfs", options, &["clinics"])?;
        let clinics = table
            .string_map("clinics")?
            .into_iter()
            .map(|(key, id)| (key.into_bytes(), id))
            .collect();
        Ok(Self { clinics })
    }

    /// The clinic id of an API key. Every configured key is compared, in constant time each.
    fn clinic_of(&self, key: &str) -> Option<&str> {
        let mut hit = u64::MAX;
        for (i, (known, _)) in self.clinics.iter().enumerate() {
            let equal = known.as_slice().ct_eq(key.as_bytes());
            hit = u64::conditional_select(&hit, &(i as u64), equal);
        }
        usize::try_from(hit)
            .ok()
            .and_then(|i| self.clinics.get(i))
            .map(|(_, id)| id.as_str())
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default, bound(deserialize = "'de: 'a"))]
struct WireEvent<'a> {
    clinic_api_key: Option<Scalar<'a>>,
    clinic_id: Option<Scalar<'a>>,
    event_type: Option<Scalar<'a>>,
    object: Option<WireObject<'a>>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default, bound(deserialize = "'de: 'a"))]
struct WireObject<'a> {
    id: Option<Scalar<'a>>,
    hospitalization_id: Option<Scalar<'a>>,
    treatment_guid: Option<Scalar<'a>>,
    status: Option<Scalar<'a>>,
    removed: Option<Scalar<'a>>,
    hospitalizations: Option<Vec<WireItem<'a>>>,
    treatments: Option<Vec<WireItem<'a>>>,
}

impl<'a> WireObject<'a> {
    /// The object itself as one item (single-item events).
    fn into_item(self) -> WireItem<'a> {
        WireItem {
            id: self.id,
            hospitalization_id: self.hospitalization_id,
            treatment_guid: self.treatment_guid,
            status: self.status,
            removed: self.removed,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", default, bound(deserialize = "'de: 'a"))]
struct WireItem<'a> {
    id: Option<Scalar<'a>>,
    hospitalization_id: Option<Scalar<'a>>,
    treatment_guid: Option<Scalar<'a>>,
    status: Option<Scalar<'a>>,
    removed: Option<Scalar<'a>>,
}

impl Decoder for SfsDecoder {
    fn format(&self) -> Format {
        Format::Sfs
    }

    fn decode(&self, msg: &RawMessage<'_>, props: &mut Properties) -> Result<Decoded, DecodeError> {
        // A bridge or producer might have copied the key into a header: never expose it.
        props.remove("clinicApiKey");
        let bytes = payload(msg)?;
        let wire: WireEvent<'_> = parse_typed(bytes)?;
        let event_type = req_text("eventType", wire.event_type)?;
        props.insert_if_absent("eventType", OwnedValue::String(event_type.to_string()));
        let clinic = match wire.clinic_api_key {
            Some(Scalar::Str(key)) => self.clinic_of(&key).map(str::to_owned),
            None | Some(Scalar::Null) => None,
            Some(_) => return Err(DecodeError::invalid("clinicApiKey", "a string")),
        };
        let clinic = match clinic {
            Some(clinic) => Some(clinic),
            None => opt_text("clinicId", wire.clinic_id)?.map(Cow::into_owned),
        };
        if let Some(clinic) = &clinic {
            props.insert_if_absent("clinicId", OwnedValue::String(clinic.clone()));
        }
        let event_time = receive_time(msg);
        let build = |entity_type: &'static str, entity_id: Cow<'_, str>, status: String| {
            let mut captured = BTreeMap::new();
            if let Some(clinic) = &clinic {
                captured.insert("clinicId".to_owned(), Some(clinic.clone()));
            }
            Observation {
                event_type: Cow::Borrowed("StatusChangeEvent"),
                entity_type: Cow::Borrowed(entity_type),
                entity_id: entity_id.into_owned(),
                kind: ObservationKind::Updated,
                attributes: Attributes::one("status".to_owned(), Some(status)),
                captured,
                event_time,
                changed_by: None,
                version: None,
                scope: Scope::Unscoped,
            }
        };
        let object = || wire.object.ok_or_else(|| DecodeError::missing("object"));
        let observations = match &*event_type {
            "hospitalization.discharged" => {
                let item = object()?.into_item();
                let id = hospitalization_id("object", item)?;
                vec![build("Hospitalization", id, "discharged".to_owned())]
            }
            "hospitalizations.discharged" => {
                let items = object()?
                    .hospitalizations
                    .ok_or_else(|| DecodeError::missing("object.hospitalizations"))?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let id = hospitalization_id(&format!("object.hospitalizations[{i}]"), item)?;
                    out.push(build("Hospitalization", id, "discharged".to_owned()));
                }
                out
            }
            "inventoryitems.imported" => {
                let item = object()?.into_item();
                let id = item
                    .id
                    .and_then(Scalar::into_id)
                    .ok_or_else(|| DecodeError::missing("object.id"))?;
                let status = opt_text("object.status", item.status)?
                    .map_or_else(|| "imported".to_owned(), Cow::into_owned);
                vec![build("InventoryImport", id, status)]
            }
            "treatment.record_entered" => {
                let item = object()?.into_item();
                let (obs, hosp) = medical_record("object", item)?;
                let mut o = build("MedicalRecord", obs.0, obs.1);
                capture_hospitalization(&mut o, hosp);
                vec![o]
            }
            "treatments.records_entered" => {
                let items = object()?
                    .treatments
                    .ok_or_else(|| DecodeError::missing("object.treatments"))?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let (obs, hosp) = medical_record(&format!("object.treatments[{i}]"), item)?;
                    let mut o = build("MedicalRecord", obs.0, obs.1);
                    capture_hospitalization(&mut o, hosp);
                    out.push(o);
                }
                out
            }
            _ => {
                return Ok(Decoded {
                    observations: Vec::new(),
                    notes: vec![DecodeNote::Ignored],
                })
            }
        };
        Ok(Decoded {
            observations,
            notes: Vec::new(),
        })
    }
}

fn hospitalization_id<'a>(path: &str, item: WireItem<'a>) -> Result<Cow<'a, str>, DecodeError> {
    item.hospitalization_id
        .and_then(Scalar::into_id)
        .or_else(|| item.id.and_then(Scalar::into_id))
        .ok_or_else(|| DecodeError::missing(&format!("{path}.hospitalizationId")))
}

type RecordStatus<'a> = (Cow<'a, str>, String);

fn medical_record<'a>(
    path: &str,
    item: WireItem<'a>,
) -> Result<(RecordStatus<'a>, Option<Cow<'a, str>>), DecodeError> {
    let id = item
        .treatment_guid
        .and_then(Scalar::into_id)
        .or_else(|| item.id.and_then(Scalar::into_id))
        .ok_or_else(|| DecodeError::missing(&format!("{path}.treatmentGuid")))?;
    let removed = match item.removed {
        None | Some(Scalar::Null) => false,
        Some(Scalar::Bool(b)) => b,
        Some(_) => {
            return Err(DecodeError::invalid(
                &format!("{path}.removed"),
                "a boolean",
            ))
        }
    };
    let status = match opt_text(&format!("{path}.status"), item.status)? {
        Some(s) => s.into_owned(),
        None if removed => "removed".to_owned(),
        None => "entered".to_owned(),
    };
    let hospitalization = item.hospitalization_id.and_then(Scalar::into_id);
    Ok(((id, status), hospitalization))
}

fn capture_hospitalization(obs: &mut Observation, hospitalization: Option<Cow<'_, str>>) {
    if let Some(h) = hospitalization {
        obs.captured
            .insert("hospitalizationId".to_owned(), Some(h.into_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::testing::{fixture, msg};

    fn decode_with(
        decoder: &SfsDecoder,
        name: &str,
        props: &mut Properties,
    ) -> Result<Decoded, DecodeError> {
        let bytes = fixture("sfs", name);
        decoder.decode(&msg("sfs.events", &bytes), props)
    }

    fn decode(name: &str) -> Result<Decoded, DecodeError> {
        decode_with(&SfsDecoder::default(), name, &mut Properties::new())
    }

    fn ids(d: &Decoded) -> Vec<(&str, &str, Option<&str>)> {
        d.observations
            .iter()
            .map(|o| {
                assert_eq!(o.kind, ObservationKind::Updated);
                (
                    &*o.entity_type,
                    o.entity_id.as_str(),
                    o.attributes["status"].as_deref(),
                )
            })
            .collect()
    }

    #[test]
    fn discharges_use_the_emr_hospitalization_id() {
        let d = decode("hospitalization_discharged").unwrap();
        assert_eq!(
            ids(&d),
            [("Hospitalization", "emr-h-100", Some("discharged"))]
        );
        let d = decode("hospitalizations_discharged").unwrap();
        // The batch's operation id `op-77` is never an entity; an item without the EMR's id
        // falls back to its own id.
        assert_eq!(
            ids(&d),
            [
                ("Hospitalization", "emr-h-100", Some("discharged")),
                ("Hospitalization", "emr-h-101", Some("discharged")),
                ("Hospitalization", "sfs-h-3", Some("discharged")),
            ]
        );
    }

    #[test]
    fn imports_and_medical_records() {
        let d = decode("inventoryitems_imported").unwrap();
        assert_eq!(ids(&d), [("InventoryImport", "import-5", Some("finished"))]);
        let d = decode("treatment_record_entered").unwrap();
        assert_eq!(ids(&d), [("MedicalRecord", "t-1", Some("entered"))]);
        assert_eq!(
            d.observations[0].captured["hospitalizationId"].as_deref(),
            Some("emr-h-100")
        );
        let d = decode("treatments_records_entered").unwrap();
        assert_eq!(
            ids(&d),
            [
                ("MedicalRecord", "t-2", Some("entered")),
                ("MedicalRecord", "t-3", Some("removed")),
            ]
        );
    }

    #[test]
    fn unknown_event_types_are_ignored() {
        let mut props = Properties::new();
        let d = decode_with(&SfsDecoder::default(), "unknown_event", &mut props).unwrap();
        assert!(d.observations.is_empty());
        assert_eq!(d.notes, vec![DecodeNote::Ignored]);
        assert_eq!(props.get_str("eventType"), Some("flowsheet.report_ready"));
    }

    #[test]
    fn the_api_key_maps_to_a_clinic_and_is_never_kept() {
        let decoder = SfsDecoder::from_options(
            &toml::from_str(
                "[clinics]\n\"other-key\" = \"c-0\"\n\"clinic-api-key\" = \"clinic-1\"\n\"clinic-api-kez\" = \"c-2\"",
            )
            .unwrap(),
        )
        .unwrap();
        assert!(!format!("{decoder:?}").contains("clinic-api-key"));
        let mut props = Properties::new();
        props.insert_str("clinicApiKey", "clinic-api-key");
        let d = decode_with(&decoder, "hospitalization_discharged", &mut props).unwrap();
        assert_eq!(props.get_str("clinicId"), Some("clinic-1"));
        assert_eq!(
            d.observations[0].captured["clinicId"].as_deref(),
            Some("clinic-1")
        );
        let everything = format!("{props:?} {d:?}");
        assert!(!everything.contains("clinic-api-key"), "{everything}");

        let mut props = Properties::new();
        decode_with(
            &SfsDecoder::default(),
            "hospitalization_discharged",
            &mut props,
        )
        .unwrap();
        assert_eq!(props.get_str("clinicId"), None);
        assert_eq!(props.len(), 1, "{props:?}");
    }

    #[test]
    fn a_bridged_event_names_its_clinic() {
        let bytes = br#"{"clinicId":"clinic-9","eventType":"hospitalization.discharged","object":{"hospitalizationId":"h-1"}}"#;
        let mut props = Properties::new();
        let d = SfsDecoder::default()
            .decode(&msg("sfs.events", bytes), &mut props)
            .unwrap();
        assert_eq!(props.get_str("clinicId"), Some("clinic-9"));
        assert_eq!(
            d.observations[0].captured["clinicId"].as_deref(),
            Some("clinic-9")
        );
    }

    #[test]
    fn precise_reasons() {
        for (name, expected) in [
            ("bad_missing_id", "`object.hospitalizationId` is missing"),
            ("bad_object_type", "`object` has the wrong type"),
            ("bad_event_type", "`eventType` must be a string"),
            (
                "bad_batch_without_list",
                "`object.hospitalizations` is missing",
            ),
            ("bad_missing_object", "`object` is missing"),
        ] {
            let e = decode(name).unwrap_err().to_string();
            assert!(e.contains(expected), "{name}: {e}");
        }
    }
}
