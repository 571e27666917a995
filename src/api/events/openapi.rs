//! What the OpenAPI document says of the events endpoints beyond their handlers' annotations:
//! the rules of `GET /api/events`'s parameters, and the errors and scope of both endpoints.

use serde_json::{json, Value};

use super::query::{DATE_PATTERN, MAX_PAGE, MAX_TEXT_LEN, TEXT_PATTERN};
use crate::api::config::ApiConfig;

const UNAUTHORIZED: &str = "Missing or invalid bearer token.";
const UNAVAILABLE: &str = "The event database is unavailable, or more queries wait than `api.query_queue_timeout` allows (then with `Retry-After`).";

/// Each endpoint's error answers (every body an `ErrorBody`), by status.
const ERRORS: [(&str, &[(&str, &str)]); 2] = [
    (
        "/api/events",
        &[
            ("401", UNAUTHORIZED),
            (
                "403",
                "The token lacks `event:read` or the event type's scope.",
            ),
            ("422", "Invalid query parameters."),
            ("503", UNAVAILABLE),
        ],
    ),
    (
        "/api/events/{id}",
        &[
            ("401", UNAUTHORIZED),
            ("403", "The token lacks `event:read`."),
            ("404", "No such event (or not visible to this token)."),
            ("503", UNAVAILABLE),
        ],
    ),
];

/// Completes the events endpoints in `document`: their error answers, the bearer scope both
/// need (`event:read`), and the rules of the list's parameters as `config` sets them.
pub(crate) fn document_events(document: &mut Value, config: &ApiConfig) {
    for (path, errors) in ERRORS {
        let pointer = format!("/paths/{}/get", path.replace('/', "~1"));
        let Some(operation) = document.pointer_mut(&pointer) else {
            continue;
        };
        for (status, description) in errors {
            operation["responses"][status] = json!({
                "description": description,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                },
            });
        }
        operation["security"] = json!([{"bearer": ["event:read"]}]);
        if path == "/api/events" {
            document_list_rules(operation, config);
        }
    }
}

/// Writes the rules [`super::parse_query`] enforces into the OpenAPI operation of `GET /api/events`:
/// per parameter as JSON Schema (length, pattern, bounds, with `api.max_page_size` and
/// `api.default_page_size` as configured), and the rules between parameters, which JSON Schema
/// cannot state, in the descriptions. Generated clients and fuzzers then send what the server
/// accepts.
fn document_list_rules(operation: &mut Value, config: &ApiConfig) {
    let hours = config.events_list_max_period_hours;
    let date_grammar = "a date `2017-04-20` (midnight UTC), or a date and time \
        `2017-04-20T19:14:13` (also `t` or a space for `T`; seconds and 1-9 fraction digits \
        optional) in UTC, or with a zone `Z` or `+02:00` (a space for an unencoded `+`)";
    let text = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_TEXT_LEN,
        "pattern": TEXT_PATTERN,
    });
    let text_rule = format!("1 to {MAX_TEXT_LEN} characters, no control characters.");
    let rules: [(&str, String, Value); 8] = [
        (
            "date",
            format!(
                "Window start, inclusive: {date_grammar}. Not after `date_to`; at most {hours} \
                 hours (`api.events_list_max_period_hours`) before it. Without `date_to` the \
                 window is {hours} hours from `date`."
            ),
            json!({"type": "string", "pattern": DATE_PATTERN}),
        ),
        (
            "date_to",
            format!(
                "Window end, exclusive, in the same formats as `date`. Without `date` the \
                 window is {hours} hours up to `date_to`; without both, the last {hours} hours."
            ),
            json!({"type": "string", "pattern": DATE_PATTERN}),
        ),
        (
            "event_type",
            format!("Only this event type. {text_rule}"),
            text.clone(),
        ),
        (
            "entity_type",
            format!("Only this entity type. {text_rule}"),
            text.clone(),
        ),
        (
            "attribute_name",
            format!("Only events whose properties have this attribute. {text_rule}"),
            text.clone(),
        ),
        (
            "new_value",
            format!(
                "Only events where the attribute `attribute_name` has this `new_value`; \
                 only together with `attribute_name`. {text_rule}"
            ),
            text,
        ),
        (
            "page",
            "Page number, from 1 (decimal digits, no sign or leading zero).".into(),
            json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}),
        ),
        (
            "page_size",
            format!(
                "Events per page, at most `api.max_page_size` (here {}), default \
                 `api.default_page_size` (decimal digits, no sign or leading zero).",
                config.max_page_size
            ),
            json!({"type": "integer", "minimum": 1, "maximum": config.max_page_size,
                   "default": config.default_page_size}),
        ),
    ];
    if let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters {
            let name = parameter.get("name").and_then(Value::as_str);
            if let Some((_, description, schema)) = rules.iter().find(|(n, ..)| Some(*n) == name) {
                parameter["description"] = json!(description);
                parameter["schema"] = schema.clone();
            }
        }
    }
    operation["description"] = json!(format!(
        "Events of the window `date <= event_time < date_to`, ordered by `event_time`, then \
         `id`. Every rule of the parameters is checked, and a request that breaks any is 422 \
         naming each offending parameter: also unknown parameters (a misspelt filter never \
         widens the result), a parameter given twice, percent-encoded bytes that are not \
         UTF-8, `new_value` without `attribute_name`, `date` after `date_to`, and `date` and \
         `date_to` more than {hours} hours apart. Events of a type whose scope \
         (`auth.event_type_scopes`) the token lacks are left out, and asking for such a type \
         with `event_type` is 403."
    ));
}
