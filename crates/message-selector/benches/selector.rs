//! Parse time, and evaluations per second of a realistic selector next to an equivalent
//! hand-written closure over the same property source.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use message_selector::{PropertySource, Selector, Value};

const SELECTOR: &str = "messageType = 'EHealthContextEvent' AND resourceVersion > 3 \
    AND resourceReference LIKE 'https://%/CarePlan/%' AND eventType IN ('created','updated')";

/// The properties an eHealth decoder lifts from a message, looked up by a match on name.
struct EHealthProperties {
    message_type: &'static str,
    resource_version: i64,
    resource_reference: &'static str,
    event_type: &'static str,
}

impl PropertySource for EHealthProperties {
    #[inline]
    fn get(&self, name: &str) -> Option<Value<'_>> {
        match name {
            "messageType" => Some(Value::String(self.message_type)),
            "resourceVersion" => Some(Value::Long(self.resource_version)),
            "resourceReference" => Some(Value::String(self.resource_reference)),
            "eventType" => Some(Value::String(self.event_type)),
            _ => None,
        }
    }
}

const MATCHING: EHealthProperties = EHealthProperties {
    message_type: "EHealthContextEvent",
    resource_version: 7,
    resource_reference:
        "https://fhir.example.org/fhir/CarePlan/4f1c2a9e-1b7d-4c55-9d2e-0c1e6b1d2f3a",
    event_type: "updated",
};

const NOT_MATCHING: EHealthProperties = EHealthProperties {
    message_type: "EHealthContextEvent",
    resource_version: 7,
    resource_reference:
        "https://fhir.example.org/fhir/Patient/4f1c2a9e-1b7d-4c55-9d2e-0c1e6b1d2f3a",
    event_type: "updated",
};

const NAMES: [&str; 4] = [
    "messageType",
    "resourceVersion",
    "resourceReference",
    "eventType",
];

/// The selector written by hand against the same `PropertySource`, with the same types.
/// With constant `names` the compiler resolves every `get` at compile time, which a
/// selector parsed at run time cannot do; behind `black_box` the names are looked up at
/// run time, as the selector must.
#[inline]
fn hand_written<P: PropertySource>(props: &P, names: &[&str; 4]) -> bool {
    matches!(props.get(names[0]), Some(Value::String(s)) if s == "EHealthContextEvent")
        && match props.get(names[1]) {
            Some(Value::Long(v)) => v > 3,
            Some(Value::Double(v)) => v > 3.0,
            _ => false,
        }
        && matches!(props.get(names[2]), Some(Value::String(s))
            if s.strip_prefix("https://").is_some_and(|rest| rest.contains("/CarePlan/")))
        && matches!(props.get(names[3]), Some(Value::String(s)) if s == "created" || s == "updated")
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    group.bench_function("realistic", |b| {
        b.iter(|| Selector::parse(black_box(SELECTOR)))
    });
    group.finish();
}

fn evaluate(c: &mut Criterion) {
    let selector = match Selector::parse(SELECTOR) {
        Ok(selector) => selector,
        Err(e) => panic!("benchmark selector must parse: {e}"),
    };
    assert!(selector.matches(&MATCHING));
    assert!(hand_written(&MATCHING, &NAMES));
    assert!(!selector.matches(&NOT_MATCHING));
    assert!(!hand_written(&NOT_MATCHING, &NAMES));

    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(1));
    for (label, props) in [("match", &MATCHING), ("no_match", &NOT_MATCHING)] {
        group.bench_function(format!("selector/{label}"), |b| {
            b.iter(|| selector.matches(black_box(props)))
        });
        group.bench_function(format!("closure/{label}"), |b| {
            b.iter(|| hand_written(black_box(props), &NAMES))
        });
        group.bench_function(format!("closure_runtime_names/{label}"), |b| {
            b.iter(|| hand_written(black_box(props), black_box(&NAMES)))
        });
    }
    group.finish();

    // Each clause alone, to see where the time goes.
    let mut group = c.benchmark_group("clause");
    group.throughput(Throughput::Elements(1));
    for src in [
        "messageType = 'EHealthContextEvent'",
        "resourceVersion > 3",
        "resourceReference LIKE 'https://%/CarePlan/%'",
        "eventType IN ('created','updated')",
    ] {
        let Ok(selector) = Selector::parse(src) else {
            panic!("clause must parse: {src}");
        };
        group.bench_function(src, |b| b.iter(|| selector.matches(black_box(&MATCHING))));
    }
    group.finish();
}

criterion_group!(benches, parse, evaluate);
criterion_main!(benches);
