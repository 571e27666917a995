//! Decoder throughput: one message per iteration, for every source format.
//! Target: at least 500 k messages/s on one core for each.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use event_manager::formats::{decoder_for, Format, RawMessage};
use event_manager::model::Properties;

/// As the service (src/main.rs): measured with the allocator it runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture(format: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format)
        .join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// ESOZ's documented sample StatusChangeEvent as `:erlang.term_to_binary/1` writes it (OTP ≥ 26
/// atoms).
fn esoz_etf() -> Vec<u8> {
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
    let mut out = vec![131];
    map(&mut out, 6);
    atom(&mut out, "event_type");
    bin(&mut out, "StatusChangeEvent");
    atom(&mut out, "entity_type");
    bin(&mut out, "EmployeeRequest");
    atom(&mut out, "entity_id");
    bin(&mut out, "df9f70ee-4b12-4740-b0f5-bb5aea116863");
    atom(&mut out, "properties");
    map(&mut out, 2);
    bin(&mut out, "status");
    map(&mut out, 1);
    atom(&mut out, "new_value");
    bin(&mut out, "APPROVED");
    bin(&mut out, "employee_id");
    map(&mut out, 1);
    atom(&mut out, "new_value");
    bin(&mut out, "e1453f4c-1077-4e85-8c98-c13ffca0063e");
    atom(&mut out, "event_time");
    map(&mut out, 9);
    atom(&mut out, "__struct__");
    atom(&mut out, "Elixir.NaiveDateTime");
    atom(&mut out, "calendar");
    atom(&mut out, "Elixir.Calendar.ISO");
    for (name, value) in [
        ("year", 2017_i32),
        ("month", 4),
        ("day", 20),
        ("hour", 19),
        ("minute", 14),
        ("second", 13),
    ] {
        atom(&mut out, name);
        if value > 255 {
            out.push(98);
            out.extend_from_slice(&value.to_be_bytes());
        } else {
            out.extend_from_slice(&[97, value as u8]);
        }
    }
    atom(&mut out, "microsecond");
    out.extend_from_slice(&[104, 2, 97, 0, 97, 0]);
    atom(&mut out, "changed_by");
    bin(&mut out, "df9f70ee-4b12-4740-b0f5-bb5aea116863");
    out
}

fn decode(c: &mut Criterion) {
    let cases: Vec<(&str, Format, &str, Vec<u8>)> = vec![
        (
            "esoz_json",
            Format::Esoz,
            "event_manager_topic",
            fixture("esoz", "status_change_sample"),
        ),
        ("esoz_etf", Format::Esoz, "event_manager_topic", esoz_etf()),
        (
            "ehealth_dk_context",
            Format::EhealthDk,
            "ehealth-careplan.status",
            fixture("ehealth-dk", "context_updated"),
        ),
        (
            "rcp_v2",
            Format::RcpV2,
            "rcp-v2.events",
            fixture("rcp-v2", "patient_call_updated"),
        ),
        (
            "sfs",
            Format::Sfs,
            "sfs.events",
            fixture("sfs", "hospitalization_discharged"),
        ),
        (
            "fhircast",
            Format::Fhircast,
            "fhircast.events",
            fixture("fhircast", "imagingstudy_open"),
        ),
    ];
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (name, format, topic, bytes) in &cases {
        let decoder = decoder_for(*format, &toml::Table::new()).expect("default options");
        let msg = RawMessage {
            topic,
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(bytes),
            timestamp_ms: Some(1_704_067_200_000),
        };
        let decoded = decoder
            .decode(&msg, &mut Properties::new())
            .expect("bench input decodes");
        assert!(!decoded.observations.is_empty(), "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut props = Properties::new();
                decoder.decode(std::hint::black_box(&msg), &mut props)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
