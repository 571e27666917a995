//! Every decoder must return Ok or a DecodeError on any input, never panic or hang.
//! The first byte picks the format; run with `cargo fuzz run decode`.
#![no_main]

use event_manager::formats::{decoder_for, Format, RawMessage};
use event_manager::model::Properties;
use libfuzzer_sys::fuzz_target;

const FORMATS: [(Format, &str); 5] = [
    (Format::Esoz, "event_manager_topic"),
    (Format::EhealthDk, "ehealth-careplan.status"),
    (Format::RcpV2, "rcp-v2.events"),
    (Format::Sfs, "sfs.events"),
    (Format::Fhircast, "fhircast.events"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let (format, topic) = FORMATS[usize::from(selector) % FORMATS.len()];
    let Ok(decoder) = decoder_for(format, &toml::Table::new()) else {
        return;
    };
    let msg = RawMessage {
        topic,
        partition: 0,
        offset: 0,
        key: None,
        payload: Some(payload),
        timestamp_ms: None,
    };
    let _ = decoder.decode(&msg, &mut Properties::new());
});
