//! `/openapi.json` against real responses: every response the tests provoke is validated with
//! `jsonschema` against the schema documented for its path and status, with objects closed
//! (`additionalProperties: false`) so that an undocumented field fails too.

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{at, insert, row, TestApi, WINDOW};

/// Closes every object schema that lists its properties.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

fn response_schema(doc: &Value, template: &str, status: StatusCode) -> Value {
    let response = &doc["paths"][template]["get"]["responses"][status.as_str()];
    assert!(
        response.is_object(),
        "{template} does not document status {status}"
    );
    let schema = response["content"]["application/json"]["schema"].clone();
    assert!(schema.is_object(), "{template} {status} has no JSON schema");
    let mut root = json!({ "components": doc["components"].clone() });
    for (k, v) in schema.as_object().unwrap() {
        root[k] = v.clone();
    }
    close_objects(&mut root);
    root
}

#[tokio::test]
async fn real_responses_match_the_documented_schemas() {
    let api = TestApi::start().await;
    let ids = insert(
        api.db(),
        &[row(
            "EmployeeRequest",
            json!({"status": {"new_value": "APPROVED", "old_value": null}}),
            at(10, 0),
        )],
    )
    .await;
    let (code, doc) = api.get_as("/openapi.json", None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let no_scope = api.token_with(&["other"]);
    let cases: Vec<(&str, String, Option<&str>, StatusCode)> = vec![
        (
            "/api/events",
            format!("/api/events?{WINDOW}"),
            Some(&api.token),
            StatusCode::OK,
        ),
        (
            "/api/events",
            "/api/events?page=0".into(),
            Some(&api.token),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/api/events",
            "/api/events".into(),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/events",
            "/api/events".into(),
            Some(&no_scope),
            StatusCode::FORBIDDEN,
        ),
        (
            "/api/events/{id}",
            format!("/api/events/{}", ids[0]),
            Some(&api.token),
            StatusCode::OK,
        ),
        (
            "/api/events/{id}",
            "/api/events/nope".into(),
            Some(&api.token),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/events/{id}",
            "/api/events/nope".into(),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        ("/healthz", "/healthz".into(), None, StatusCode::OK),
        ("/readyz", "/readyz".into(), None, StatusCode::OK),
    ];
    let mut checked = std::collections::BTreeSet::new();
    for (template, path, token, expected) in cases {
        let (code, body) = api.get_as(&path, token).await;
        assert_eq!(code, expected, "{path}: {body}");
        let schema = response_schema(&doc, template, code);
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{path} {code}: {errors:?}\n{body}");
        checked.insert(template);
    }
    // The list's first event really was validated against the event schema.
    assert_eq!(checked.len(), 4);
    let documented: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for path in [
        "/api/events",
        "/api/events/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            documented.iter().any(|p| *p == path),
            "{path} is not documented"
        );
    }
}

#[tokio::test]
async fn the_schema_rejects_what_the_api_never_sends() {
    // Guards the test above: a closed schema must fail on an extra field or a wrong type.
    let api = TestApi::start().await;
    let (_, doc) = api.get_as("/openapi.json", None).await;
    let schema = response_schema(&doc, "/api/events/{id}", StatusCode::OK);
    let validator = jsonschema::validator_for(&schema).unwrap();
    let event = json!({"data": {
        "id": "0190c0e0-0000-7000-8000-000000000000", "event_type": "StatusChangeEvent",
        "entity_type": "A", "entity_id": "1", "properties": {}, "event_time": "2024-03-10T10:00:00Z",
        "changed_by": null
    }});
    assert!(validator.is_valid(&event));
    let mut extra = event.clone();
    extra["data"]["secret"] = json!("x");
    assert!(!validator.is_valid(&extra));
    let mut wrong = event.clone();
    wrong["data"]["entity_id"] = json!(1);
    assert!(!validator.is_valid(&wrong));
}

#[tokio::test]
async fn the_document_states_the_configured_limits_of_the_list() {
    let config = event_manager::config::ApiConfig {
        max_page_size: 20,
        default_page_size: 5,
        events_list_max_period_hours: 6,
        ..Default::default()
    };
    let api = TestApi::start_with(config, super::auth_config()).await;
    let (_, doc) = api.get_as("/openapi.json", None).await;
    let list = &doc["paths"]["/api/events"]["get"];
    let parameter = |name: &str| {
        list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not documented"))
            .clone()
    };
    assert_eq!(parameter("page_size")["schema"]["maximum"], 20);
    assert_eq!(parameter("page_size")["schema"]["default"], 5);
    assert_eq!(parameter("page")["schema"]["maximum"], 1_000_000);
    for name in ["event_type", "entity_type", "attribute_name", "new_value"] {
        let schema = &parameter(name)["schema"];
        assert_eq!(schema["minLength"], 1, "{name}");
        assert_eq!(schema["maxLength"], 256, "{name}");
        assert!(schema["pattern"].is_string(), "{name}");
    }
    for name in ["date", "date_to"] {
        assert_eq!(
            parameter(name)["schema"]["pattern"],
            event_manager::api::events::DATE_PATTERN,
            "{name}"
        );
    }
    let description = list["description"].as_str().unwrap();
    assert!(description.contains("6 hours"), "{description}");
    assert!(description.contains("unknown parameters"), "{description}");
    // A request the document allows at the limit is accepted, one past it is not.
    let (code, _) = api.get("/api/events?page_size=20").await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = api.get("/api/events?page_size=21").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
}
