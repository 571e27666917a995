//! Source formats: one decoder per format, each turning a raw Kafka message into
//! selector properties and observations. Pure code: no I/O.

mod ehealth_dk;
mod esoz;
mod etf;
mod fhircast;
mod rcp_v2;
mod sfs;
mod wire;

use serde::{Deserialize, Serialize};

use crate::detect::FirstSeen;
use crate::model::{Observation, Properties};

pub use ehealth_dk::{EhealthDkDecoder, StatusLookup};
pub use esoz::EsozDecoder;
pub use fhircast::{FhircastDecoder, SessionIds};
pub use rcp_v2::RcpV2Decoder;
pub use sfs::SfsDecoder;

/// A Kafka message as the decoders see it.
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    /// Topic the message was read from.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key, if any.
    pub key: Option<&'a [u8]>,
    /// Message value, if any.
    pub payload: Option<&'a [u8]>,
    /// Broker or producer timestamp in milliseconds since the epoch, if any.
    pub timestamp_ms: Option<i64>,
}

/// The source formats event-manager understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Format {
    /// ESOZ (Ukrainian eHealth) StatusChangeEvent.
    Esoz,
    /// Danish eHealth broker events.
    EhealthDk,
    /// RCP v2 emulated events.
    RcpV2,
    /// Smart Flow Sheet webhook events.
    Sfs,
    /// FHIRcast notifications.
    Fhircast,
}

impl Format {
    /// The name used in topic rules and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Esoz => "esoz",
            Format::EhealthDk => "ehealth-dk",
            Format::RcpV2 => "rcp-v2",
            Format::Sfs => "sfs",
            Format::Fhircast => "fhircast",
        }
    }

    /// What the first observation of an attribute records unless the topic rule says
    /// otherwise: ESOZ services publish only changes, so their first message about an entity
    /// is an event; the other formats state the current value (a DK or RCP `created`, a
    /// FHIRcast open of an empty context), which is a baseline.
    pub(crate) fn default_first_seen(self) -> FirstSeen {
        match self {
            Format::Esoz => FirstSeen::Event,
            Format::EhealthDk | Format::RcpV2 | Format::Sfs | Format::Fhircast => {
                FirstSeen::Baseline
            }
        }
    }
}

/// Something a decoder noticed that is worth counting but is not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeNote {
    /// A known message whose type carries no status change (accepted, ignored).
    Ignored,
    /// A status context event without a status value: no change can be known from the
    /// message alone (a FHIR look-up may learn it, see [`StatusLookup`]).
    MissingStatus,
    /// A malformed or missing timestamp was replaced by the receive time.
    LenientTimestamp,
}

impl DecodeNote {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeNote::Ignored => "ignored",
            DecodeNote::MissingStatus => "missing_status",
            DecodeNote::LenientTimestamp => "lenient_timestamp",
        }
    }
}

/// What a decoder made of one message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// Observations about entities (possibly none).
    pub observations: Vec<Observation>,
    /// Things worth counting.
    pub notes: Vec<DecodeNote>,
}

/// Why a message could not be decoded. Each kind has a stable code for the dead-letter header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The message has no value.
    EmptyPayload,
    /// The value is larger than the format allows.
    TooLarge,
    /// The value is not valid JSON (or not the expected encoding).
    InvalidEncoding,
    /// A required field is missing.
    MissingField,
    /// A field has the wrong type or an invalid value.
    InvalidField,
    /// The message is of a type this format does not accept.
    UnsupportedType,
    /// The FHIR look-up of a missing status found no such resource version.
    LookupNotFound,
    /// The FHIR look-up of a missing status timed out (after its retries).
    LookupTimeout,
    /// The FHIR look-up of a missing status failed otherwise (after its retries).
    LookupFailed,
}

impl DecodeErrorKind {
    /// Stable machine-readable code.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeErrorKind::EmptyPayload => "empty_payload",
            DecodeErrorKind::TooLarge => "too_large",
            DecodeErrorKind::InvalidEncoding => "invalid_encoding",
            DecodeErrorKind::MissingField => "missing_field",
            DecodeErrorKind::InvalidField => "invalid_field",
            DecodeErrorKind::UnsupportedType => "unsupported_type",
            DecodeErrorKind::LookupNotFound => "lookup_not_found",
            DecodeErrorKind::LookupTimeout => "lookup_timeout",
            DecodeErrorKind::LookupFailed => "lookup_failed",
        }
    }
}

/// A message that violates its format. It goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct DecodeError {
    /// The class of problem.
    pub kind: DecodeErrorKind,
    /// Human-readable detail; never contains message bodies or patient references.
    pub detail: String,
}

impl DecodeError {
    /// Builds an error.
    pub fn new(kind: DecodeErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// A required field is missing.
    pub fn missing(field: &str) -> Self {
        Self::new(
            DecodeErrorKind::MissingField,
            format!("required field `{field}` is missing"),
        )
    }

    /// A field has the wrong type or value.
    pub fn invalid(field: &str, expected: &str) -> Self {
        Self::new(
            DecodeErrorKind::InvalidField,
            format!("field `{field}` must be {expected}"),
        )
    }
}

/// Upper bound on a message value any decoder accepts (bytes).
pub(crate) const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// A source-format decoder. Implementations are pure and cheap to call.
pub trait Decoder: Send + Sync + std::fmt::Debug {
    /// The format this decoder reads.
    fn format(&self) -> Format;

    /// Decodes one message. Body fields useful to selectors are added to `props`
    /// (headers already there win).
    fn decode(&self, msg: &RawMessage<'_>, props: &mut Properties) -> Result<Decoded, DecodeError>;

    /// Decodes like [`Decoder::decode`] and also returns what a FHIR look-up needs when the
    /// message announces a status without giving it. Only formats that can say so override it.
    fn decode_with_lookup(
        &self,
        msg: &RawMessage<'_>,
        props: &mut Properties,
    ) -> Result<(Decoded, Option<StatusLookup>), DecodeError> {
        self.decode(msg, props).map(|d| (d, None))
    }
}

/// Returns the payload, or the error every decoder gives for a missing or oversized one.
pub fn payload<'a>(msg: &RawMessage<'a>) -> Result<&'a [u8], DecodeError> {
    match msg.payload {
        None | Some([]) => Err(DecodeError::new(
            DecodeErrorKind::EmptyPayload,
            "message has no value",
        )),
        Some(p) if p.len() > MAX_PAYLOAD_BYTES => Err(DecodeError::new(
            DecodeErrorKind::TooLarge,
            format!(
                "message value is {} bytes, more than the {} allowed",
                p.len(),
                MAX_PAYLOAD_BYTES
            ),
        )),
        Some(p) => Ok(p),
    }
}

/// What decoders take from the service's configuration rather than from their topic rule.
#[derive(Debug, Clone, Default)]
pub(crate) struct DecoderContext {
    /// How FHIRcast session ids stand for `hub.topic`.
    pub fhircast_sessions: SessionIds,
}

/// Builds the decoder for a format. `options` is the topic rule's `[options]` table.
pub fn decoder_for(
    format: Format,
    options: &toml::Table,
) -> Result<Box<dyn Decoder>, FormatConfigError> {
    decoder_with(format, options, &DecoderContext::default())
}

/// [`decoder_for`] with what the decoders take from the service's configuration.
pub(crate) fn decoder_with(
    format: Format,
    options: &toml::Table,
    context: &DecoderContext,
) -> Result<Box<dyn Decoder>, FormatConfigError> {
    match format {
        Format::Esoz => Ok(Box::new(EsozDecoder::from_options(options)?)),
        Format::EhealthDk => Ok(Box::new(EhealthDkDecoder::from_options(options)?)),
        Format::RcpV2 => Ok(Box::new(RcpV2Decoder::from_options(options)?)),
        Format::Sfs => Ok(Box::new(SfsDecoder::from_options(options)?)),
        Format::Fhircast => Ok(Box::new(FhircastDecoder::from_options(
            options,
            &context.fhircast_sessions,
        )?)),
    }
}

/// A topic rule's format options are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatConfigError(pub String);

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by the decoder tests.

    use std::path::PathBuf;

    use super::RawMessage;

    /// The fixture directory of a format.
    pub(crate) fn dir(format: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format)
    }

    /// One fixture's bytes.
    pub(crate) fn fixture(format: &str, name: &str) -> Vec<u8> {
        let path = dir(format).join(format!("{name}.json"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every fixture of a format, by file stem, in name order.
    pub(crate) fn all(format: &str) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir(format))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                (stem, std::fs::read(&p).unwrap())
            })
            .collect();
        out.sort();
        out
    }

    /// A message on `topic` with a Kafka timestamp of 2024-01-01T00:00:00Z.
    pub(crate) fn msg<'a>(topic: &'a str, payload: &'a [u8]) -> RawMessage<'a> {
        RawMessage {
            topic,
            partition: 0,
            offset: 42,
            key: None,
            payload: Some(payload),
            timestamp_ms: Some(1_704_067_200_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FORMATS: [(Format, &str, &str); 5] = [
        (Format::Esoz, "esoz", "event_manager_topic"),
        (Format::EhealthDk, "ehealth-dk", "ehealth-careplan.status"),
        (Format::RcpV2, "rcp-v2", "rcp-v2.events"),
        (Format::Sfs, "sfs", "sfs.events"),
        (Format::Fhircast, "fhircast", "fhircast.events"),
    ];

    /// Text of the fixtures that must never reach a dead-letter reason.
    const SECRETS: [&str; 8] = [
        "sundhed",
        "Patient/",
        "emr-h",
        "clinic-api-key",
        "ewUbXT9",
        "pat-1",
        "session",
        "APPROVED",
    ];

    #[test]
    fn every_fixture_decodes_or_is_rejected_as_its_name_says() {
        for (format, dir, topic) in FORMATS {
            let decoder = decoder_for(format, &toml::Table::new()).unwrap();
            let fixtures = testing::all(dir);
            assert!(fixtures.len() >= 4, "{dir}: too few fixtures");
            for (name, bytes) in fixtures {
                let result = decoder.decode(&testing::msg(topic, &bytes), &mut Properties::new());
                match (name.starts_with("bad_"), result) {
                    (false, Ok(_)) => {}
                    (true, Err(e)) => {
                        for secret in SECRETS {
                            assert!(!e.detail.contains(secret), "{dir}/{name}: {e}");
                        }
                    }
                    (false, Err(e)) => panic!("{dir}/{name} was rejected: {e}"),
                    (true, Ok(d)) => panic!("{dir}/{name} was accepted: {d:?}"),
                }
            }
        }
    }

    #[test]
    fn unknown_options_are_named() {
        let mut options = toml::Table::new();
        options.insert("bogus".into(), toml::Value::Boolean(true));
        for (format, _, _) in FORMATS {
            let e = decoder_for(format, &options).unwrap_err();
            assert!(e.0.contains("`bogus`"), "{format:?}: {e}");
        }
    }

    #[test]
    fn shipped_topic_rules_build_their_decoders() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
        let rules = crate::config::load_topic_rules(&dir).unwrap();
        for (format, _, _) in FORMATS {
            assert!(rules.iter().any(|r| r.format == format), "{format:?}");
        }
        for rule in &rules {
            let decoder = decoder_for(rule.format, &rule.options)
                .unwrap_or_else(|e| panic!("{}: {e}", rule.label()));
            assert_eq!(decoder.format(), rule.format);
            if let Some(pattern) = &rule.pattern {
                let re = regex::Regex::new(pattern).unwrap();
                for other in &rules {
                    assert!(
                        !re.is_match(&other.dead_letter_topic),
                        "{pattern} matches {}",
                        other.dead_letter_topic
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn no_decoder_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), etf in any::<bool>()) {
            let mut bytes = bytes;
            if etf {
                bytes.insert(0, 131);
            }
            for (format, _, topic) in FORMATS {
                let decoder = decoder_for(format, &toml::Table::new()).unwrap();
                let _ = decoder.decode(&testing::msg(topic, &bytes), &mut Properties::new());
            }
        }
    }
}
