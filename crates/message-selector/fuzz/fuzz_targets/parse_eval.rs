//! Parses arbitrary text as a selector; whatever parses must print, re-parse to the same
//! tree, and evaluate without panicking against a few property sets.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use message_selector::{OwnedValue, Selector};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = Selector::parse(src) else {
        return;
    };

    let printed = selector.to_string();
    match Selector::parse(&printed) {
        Ok(again) => assert_eq!(
            again.ast(),
            selector.ast(),
            "{src:?} printed as {printed:?}"
        ),
        Err(e) => panic!("{src:?} printed as {printed:?}, which does not parse: {e}"),
    }

    let empty: HashMap<String, OwnedValue> = HashMap::new();
    let _ = selector.evaluate(&empty);
    // Give every referenced property each type in turn.
    let samples = [
        OwnedValue::String("abc%_".to_owned()),
        OwnedValue::Long(i64::MAX),
        OwnedValue::Long(-1),
        OwnedValue::Double(f64::NAN),
        OwnedValue::Double(0.5),
        OwnedValue::Boolean(true),
    ];
    for sample in samples {
        let props: HashMap<String, OwnedValue> = selector
            .identifiers()
            .map(|name| (name.to_owned(), sample.clone()))
            .collect();
        let truth = selector.evaluate(&props);
        assert_eq!(
            selector.matches(&props),
            truth == message_selector::Truth::True
        );
    }
});
