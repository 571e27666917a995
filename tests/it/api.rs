//! The HTTP API against real PostgreSQL: each test serves the router on its own port-0 listener
//! over a database of its own, and inserts events with plain SQL.

mod auth;
mod counts;
mod indexes;
mod openapi;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use event_manager::api::admission::QuerySlots;
use event_manager::api::auth::{mint_token, Authenticator};
use event_manager::api::{self, ApiState};
use event_manager::config::{ApiConfig, AuthConfig, DatabaseConfig};
use event_manager::health::Readiness;
use event_manager::metrics::{ApiQueryMetrics, DbPoolMetrics, HttpMetrics};
use event_manager::store::EventStore;
use prometheus::Registry;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::support::{fresh_database, TestDatabase};

pub(crate) const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// A running API server.
pub(crate) struct TestApi {
    pub(crate) addr: SocketAddr,
    pub(crate) db: Option<TestDatabase>,
    pub(crate) auth: AuthConfig,
    pub(crate) token: String,
    pub(crate) http: reqwest::Client,
    _stop: DropGuard,
}

pub(crate) fn auth_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    }
}

impl TestApi {
    pub(crate) async fn start() -> Self {
        Self::start_with(ApiConfig::default(), auth_config()).await
    }

    pub(crate) async fn start_with(api: ApiConfig, auth: AuthConfig) -> Self {
        let db = fresh_database().await;
        let store = db.store.clone();
        Self::serve(Some(db), store, api, auth, Readiness::default()).await
    }

    pub(crate) async fn serve(
        db: Option<TestDatabase>,
        store: EventStore,
        api: ApiConfig,
        auth: AuthConfig,
        readiness: Readiness,
    ) -> Self {
        let registry = Registry::new();
        let query_slots = QuerySlots::new(&api, ApiQueryMetrics::register(&registry).unwrap());
        let state = ApiState {
            store,
            readiness: Arc::new(readiness),
            api: Arc::new(api),
            auth: Arc::new(Authenticator::from_config(&auth).expect("auth config")),
            http_metrics: HttpMetrics::register(&registry).unwrap(),
            db_pool_metrics: DbPoolMetrics::register(&registry).unwrap(),
            query_slots,
            registry,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(api::serve(listener, api::router(state), stop.clone()));
        let token = if auth.hs256_secret.is_some() {
            mint_token(
                &auth,
                &["event:read".into()],
                Duration::from_secs(600),
                "tester",
            )
            .unwrap()
        } else {
            String::new()
        };
        Self {
            addr,
            db,
            auth,
            token,
            http: reqwest::Client::new(),
            _stop: stop.drop_guard(),
        }
    }

    pub(crate) fn db(&self) -> &TestDatabase {
        self.db.as_ref().expect("this server has a test database")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET with the default token.
    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(path, Some(&self.token.clone())).await
    }

    pub(crate) async fn get_as(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let response = self.request(path, token).await;
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub(crate) async fn request(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    pub(crate) fn token_with(&self, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        mint_token(&self.auth, &scopes, Duration::from_secs(600), "tester").unwrap()
    }
}

/// An event to insert.
pub(crate) struct Row<'a> {
    pub(crate) event_type: &'a str,
    pub(crate) entity_type: &'a str,
    pub(crate) properties: Value,
    pub(crate) event_time: DateTime<Utc>,
}

pub(crate) fn row<'a>(
    entity_type: &'a str,
    properties: Value,
    event_time: DateTime<Utc>,
) -> Row<'a> {
    Row {
        event_type: "StatusChangeEvent",
        entity_type,
        properties,
        event_time,
    }
}

/// Inserts events with SQL and returns their ids, in order.
pub(crate) async fn insert(db: &TestDatabase, rows: &[Row<'_>]) -> Vec<Uuid> {
    let client = db.client().await;
    let mut ids = Vec::new();
    for r in rows {
        let id = Uuid::now_v7();
        client
            .execute(
                "INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                 changed_by, source_topic, source_partition, source_offset, source_seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'user-1', 'test', 0, \
                         (SELECT count(*) FROM events), 0)",
                &[&id, &r.event_type, &r.entity_type, &id.to_string(), &r.properties, &r.event_time],
            )
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

pub(crate) fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 10, h, m, 0).unwrap()
}

fn status(v: &str) -> Value {
    json!({"status": {"new_value": v, "old_value": null}})
}

fn ids_of(body: &Value) -> Vec<Uuid> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {body}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn invalid_parameters(body: &Value) -> Vec<String> {
    assert_eq!(body["error"]["type"], "validation_failed", "{body}");
    body["error"]["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["parameter"].as_str().unwrap().to_owned())
        .collect()
}

const WINDOW: &str = "date=2024-03-10T10:00:00Z&date_to=2024-03-10T11:00:00Z";

#[tokio::test]
async fn list_filters_and_their_combinations() {
    let api = TestApi::start().await;
    let ids = insert(
        api.db(),
        &[
            row("Declaration", status("active"), at(10, 0)),
            row("Declaration", status("terminated"), at(10, 10)),
            row(
                "EmployeeRequest",
                json!({"status": {"new_value": "APPROVED"}, "employee_id": {"new_value": "e1"}}),
                at(10, 20),
            ),
            row("EmployeeRequest", status("REJECTED"), at(10, 30)),
            Row {
                event_type: "StateChangeEvent",
                entity_type: "Declaration",
                properties: json!({"is_suspended": {"new_value": "true"}}),
                event_time: at(10, 40),
            },
            // Outside the window: at its exclusive end, and before its start.
            row("Declaration", status("active"), at(11, 0)),
            row("Declaration", status("active"), at(9, 59)),
        ],
    )
    .await;
    let cases: Vec<(&str, Vec<usize>)> = vec![
        ("", vec![0, 1, 2, 3, 4]),
        ("&event_type=StatusChangeEvent", vec![0, 1, 2, 3]),
        ("&event_type=StateChangeEvent", vec![4]),
        ("&entity_type=EmployeeRequest", vec![2, 3]),
        ("&attribute_name=status", vec![0, 1, 2, 3]),
        ("&attribute_name=employee_id", vec![2]),
        ("&attribute_name=is_suspended&new_value=true", vec![4]),
        ("&attribute_name=status&new_value=terminated", vec![1]),
        ("&attribute_name=status&new_value=APPROVED&entity_type=EmployeeRequest", vec![2]),
        ("&attribute_name=status&new_value=approved", vec![]),
        ("&event_type=StatusChangeEvent&entity_type=Declaration", vec![0, 1]),
        ("&event_type=StateChangeEvent&entity_type=Declaration&attribute_name=is_suspended", vec![4]),
        ("&event_type=StatusChangeEvent&entity_type=Declaration&attribute_name=status&new_value=active", vec![0]),
        ("&entity_type=Nothing", vec![]),
    ];
    for (filter, expected) in cases {
        let (code, body) = api.get(&format!("/api/events?{WINDOW}{filter}")).await;
        assert_eq!(code, StatusCode::OK, "{filter}: {body}");
        let expected: Vec<Uuid> = expected.iter().map(|i| ids[*i]).collect();
        assert_eq!(ids_of(&body), expected, "{filter}");
        assert_eq!(body["paging"]["total_entries"], expected.len(), "{filter}");
    }

    // Each event exactly as stored.
    let (_, body) = api
        .get(&format!("/api/events?{WINDOW}&attribute_name=employee_id"))
        .await;
    assert_eq!(
        body["data"][0],
        json!({
            "id": ids[2].to_string(),
            "event_type": "StatusChangeEvent",
            "entity_type": "EmployeeRequest",
            "entity_id": ids[2].to_string(),
            "properties": {"status": {"new_value": "APPROVED"}, "employee_id": {"new_value": "e1"}},
            "event_time": "2024-03-10T10:20:00Z",
            "changed_by": "user-1",
        })
    );
}

#[tokio::test]
async fn period_rule_of_esoz() {
    let api = TestApi::start().await;
    let now = Utc::now();
    let ids = insert(
        api.db(),
        &[
            row("A", status("x"), now - chrono::Duration::minutes(90)),
            row("A", status("x"), now - chrono::Duration::minutes(30)),
            row("A", status("x"), at(10, 0)),
            row("A", status("x"), at(10, 59)),
            row("A", status("x"), at(11, 30)),
        ],
    )
    .await;
    // No dates: the last hour up to now.
    let (code, body) = api.get("/api/events").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ids_of(&body), vec![ids[1]]);
    // date only: one period from it (inclusive start).
    let (_, body) = api.get("/api/events?date=2024-03-10T10:00:00Z").await;
    assert_eq!(ids_of(&body), vec![ids[2], ids[3]]);
    // date_to only: one period up to it (exclusive end).
    let (_, body) = api.get("/api/events?date_to=2024-03-10T11:30:00Z").await;
    assert_eq!(ids_of(&body), vec![ids[3]]);
    // Plain date-time without zone is UTC.
    let (_, body) = api.get("/api/events?date=2024-03-10%2010:30:00").await;
    assert_eq!(ids_of(&body), vec![ids[3]]);
    // Too long a period.
    let (code, body) = api
        .get("/api/events?date=2024-03-10T10:00:00Z&date_to=2024-03-10T12:00:00Z")
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["error"]["message"],
        "Period must be less than or equal to 1 hours. Please set allowed period to the query"
    );
    assert_eq!(invalid_parameters(&body), ["date", "date_to"]);

    // The limit comes from the configuration.
    let api = TestApi::start_with(
        ApiConfig {
            events_list_max_period_hours: 3,
            ..ApiConfig::default()
        },
        auth_config(),
    )
    .await;
    let (code, _) = api
        .get("/api/events?date=2024-03-10T10:00:00Z&date_to=2024-03-10T12:00:00Z")
        .await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = api
        .get("/api/events?date=2024-03-10T08:00:00Z&date_to=2024-03-10T12:00:00Z")
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["error"]["message"],
        "Period must be less than or equal to 3 hours. Please set allowed period to the query"
    );
}

#[tokio::test]
async fn every_validation_error_is_422_naming_the_parameter() {
    let api = TestApi::start().await;
    let cases = [
        ("date=yesterday", "date"),
        ("date_to=2024-02-30", "date_to"),
        (
            "date=2024-03-10T11:00:00Z&date_to=2024-03-10T10:00:00Z",
            "date",
        ),
        ("new_value=APPROVED", "new_value"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("page=-3", "page"),
        ("page=18446744073709551617", "page"),
        ("page_size=0", "page_size"),
        ("page_size=501", "page_size"),
        ("page_size=5x", "page_size"),
        ("event_type=", "event_type"),
        ("entity_type=a&entity_type=b", "entity_type"),
        ("evnt_type=StatusChangeEvent", "evnt_type"),
        ("attribute_name=%00", "attribute_name"),
        // Percent-encoded bytes that are not UTF-8: invalid, overlong, a surrogate, a lone
        // continuation byte.
        ("event_type=%ff%fe", "event_type"),
        ("entity_type=%c0%80", "entity_type"),
        ("attribute_name=status&new_value=%ed%a0%80", "new_value"),
        ("date=2024-03-10%80", "date"),
    ];
    for (query, parameter) in cases {
        let (code, body) = api.get(&format!("/api/events?{query}")).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(invalid_parameters(&body), [parameter], "{query}");
        assert!(body["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn injection_strings_never_reach_sql_as_code() {
    let api = TestApi::start().await;
    insert(api.db(), &[row("A", status("x"), at(10, 0))]).await;
    let nasty = [
        "' OR '1'='1",
        "'; DROP TABLE events; --",
        "\") OR 1=1 --",
        "status' ? 'x",
        "{\"status\": {}}",
        "$1",
        "%' OR 1=1 --",
        "\\'",
        "\u{202e}ü🙂",
    ];
    for value in nasty {
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        for parameter in [
            "date",
            "date_to",
            "event_type",
            "entity_type",
            "attribute_name",
            "page",
            "page_size",
        ] {
            let (code, body) = api.get(&format!("/api/events?{parameter}={encoded}")).await;
            assert!(
                code == StatusCode::UNPROCESSABLE_ENTITY
                    || (code == StatusCode::OK && body["data"] == json!([])),
                "{parameter}={value}: {code} {body}"
            );
        }
        let (code, body) = api
            .get(&format!(
                "/api/events?{WINDOW}&attribute_name=status&new_value={encoded}"
            ))
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["data"], json!([]));
        let (code, _) = api.get(&format!("/api/events/{encoded}")).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{value}");
    }
    let (_, body) = api.get(&format!("/api/events?{WINDOW}")).await;
    assert_eq!(body["paging"]["total_entries"], 1, "the table is intact");
}

#[tokio::test]
async fn paging_totals_and_stable_order() {
    let api = TestApi::start().await;
    // Two events share a time: the id breaks the tie.
    let mut rows: Vec<Row<'_>> = (0..6)
        .map(|i| row("A", status("x"), at(10, i * 5)))
        .collect();
    rows.push(row("A", status("y"), at(10, 0)));
    let ids = insert(api.db(), &rows).await;
    let mut expected = ids.clone();
    expected.sort_by_key(|id| {
        (
            rows[ids.iter().position(|x| x == id).unwrap()].event_time,
            *id,
        )
    });

    let mut seen = Vec::new();
    for page in 1..=3 {
        let (code, body) = api
            .get(&format!("/api/events?{WINDOW}&page={page}&page_size=3"))
            .await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            body["paging"],
            json!({"page_number": page, "page_size": 3, "total_entries": 7, "total_pages": 3})
        );
        seen.extend(ids_of(&body));
    }
    assert_eq!(seen, expected);
    let (_, body) = api
        .get(&format!("/api/events?{WINDOW}&page=4&page_size=3"))
        .await;
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["paging"]["total_pages"], 3);
    let (_, body) = api.get(&format!("/api/events?{WINDOW}")).await;
    assert_eq!(body["paging"]["page_size"], 50);
    assert_eq!(body["paging"]["page_number"], 1);
    let (_, body) = api.get("/api/events?date=2000-01-01").await;
    assert_eq!(
        body["paging"],
        json!({"page_number": 1, "page_size": 50, "total_entries": 0, "total_pages": 0})
    );
}

#[tokio::test]
async fn get_by_id() {
    let api = TestApi::start().await;
    let ids = insert(api.db(), &[row("Declaration", status("active"), at(10, 0))]).await;
    let (code, body) = api.get(&format!("/api/events/{}", ids[0])).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["data"]["id"], ids[0].to_string());
    assert_eq!(body["data"]["properties"], status("active"));
    assert_eq!(body["data"]["event_time"], "2024-03-10T10:00:00Z");
    for missing in [Uuid::now_v7().to_string(), "not-a-uuid".into(), "1".into()] {
        let (code, body) = api.get(&format!("/api/events/{missing}")).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(body["error"]["type"], "not_found");
    }
    let (code, body) = api.get("/api/nowhere").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "not_found");
}

/// Events come back exactly as stored, whatever their text holds: the body is written from the
/// rows directly, so every field is checked here against what PostgreSQL returns.
#[tokio::test]
async fn events_are_returned_exactly_as_stored() {
    let api = TestApi::start().await;
    let client = api.db().client().await;
    let tricky = [
        (
            "Quote\"Type",
            "back\\slash\"quote",
            Some("tab\there\nline\u{1}\u{1f}"),
            json!({"s": {"new_value": "ü€😀\u{7f}\u{2028}", "old_value": "\"\\/"}, "n": {"new_value": 1.5e300}, "e": {}}),
            Utc.with_ymd_and_hms(2024, 3, 10, 10, 0, 0).unwrap()
                + chrono::Duration::microseconds(1),
        ),
        (
            "Plain",
            "ascii-id",
            None,
            json!({"deep": {"new_value": [1, {"a": null}, "x"], "old_value": true}}),
            Utc.with_ymd_and_hms(2024, 3, 10, 10, 1, 0).unwrap()
                + chrono::Duration::milliseconds(120),
        ),
        (
            "Ünïcode",
            "ключ/😀",
            Some(""),
            json!({}),
            Utc.with_ymd_and_hms(2024, 3, 10, 10, 2, 3).unwrap(),
        ),
    ];
    let mut ids = Vec::new();
    for (i, (entity_type, entity_id, changed_by, properties, event_time)) in
        tricky.iter().enumerate()
    {
        let id = Uuid::now_v7();
        client
            .execute(
                "INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                 changed_by, source_topic, source_partition, source_offset, source_seq) \
                 VALUES ($1, 'StatusChangeEvent', $2, $3, $4, $5, $6, 'test', 0, $7, 0)",
                &[&id, entity_type, entity_id, properties, event_time, changed_by, &(i as i64)],
            )
            .await
            .unwrap();
        ids.push(id);
    }
    // What PostgreSQL stored, read back through the driver's own conversions.
    let mut stored = Vec::new();
    for id in &ids {
        let row = client
            .query_one(
                "SELECT id, event_type, entity_type, entity_id, properties, event_time, changed_by \
                 FROM events WHERE id = $1",
                &[id],
            )
            .await
            .unwrap();
        stored.push(json!({
            "id": row.get::<_, Uuid>(0),
            "event_type": row.get::<_, String>(1),
            "entity_type": row.get::<_, String>(2),
            "entity_id": row.get::<_, String>(3),
            "properties": row.get::<_, Value>(4),
            "event_time": row.get::<_, DateTime<Utc>>(5),
            "changed_by": row.get::<_, Option<String>>(6),
        }));
    }
    let (code, body) = api.get(&format!("/api/events?{WINDOW}")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["data"], Value::Array(stored.clone()));
    for (id, expected) in ids.iter().zip(&stored) {
        let (code, body) = api.get(&format!("/api/events/{id}")).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, json!({"data": expected}));
    }
    assert_eq!(stored[0]["event_time"], "2024-03-10T10:00:00.000001Z");
    assert_eq!(stored[1]["event_time"], "2024-03-10T10:01:00.120Z");
}

#[tokio::test]
async fn event_type_scopes_filter_the_list_and_hide_events() {
    let mut auth = auth_config();
    auth.event_type_scopes
        .insert("StateChangeEvent".into(), "event:state:read".into());
    let api = TestApi::start_with(ApiConfig::default(), auth).await;
    let ids = insert(
        api.db(),
        &[
            row("A", status("x"), at(10, 0)),
            Row {
                event_type: "StateChangeEvent",
                entity_type: "A",
                properties: status("y"),
                event_time: at(10, 1),
            },
        ],
    )
    .await;
    let reader = api.token_with(&["event:read"]);
    let both = api.token_with(&["event:read", "event:state:read"]);

    let (_, body) = api
        .get_as(&format!("/api/events?{WINDOW}"), Some(&reader))
        .await;
    assert_eq!(ids_of(&body), vec![ids[0]]);
    assert_eq!(body["paging"]["total_entries"], 1);
    let (_, body) = api
        .get_as(&format!("/api/events?{WINDOW}"), Some(&both))
        .await;
    assert_eq!(ids_of(&body), ids);

    let response = api
        .request(
            &format!("/api/events?{WINDOW}&event_type=StateChangeEvent"),
            Some(&reader),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"event-manager\", error=\"insufficient_scope\", scope=\"event:state:read\""
    );
    let (code, _) = api
        .get_as(&format!("/api/events/{}", ids[1]), Some(&reader))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = api
        .get_as(&format!("/api/events/{}", ids[1]), Some(&both))
        .await;
    assert_eq!(code, StatusCode::OK);
}

/// Waits until `f` holds, polling, or fails after the deadline.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_report_routes_by_template_and_pool_state() {
    let api = TestApi::start().await;
    let id = Uuid::now_v7();
    api.get(&format!("/api/events/{id}")).await;
    api.get(&format!("/api/events?{WINDOW}")).await;
    api.get_as("/api/events", None).await;
    let text = api.request("/metrics", None).await.text().await.unwrap();
    for line in [
        "event_manager_http_request_duration_seconds_count{method=\"GET\",route=\"/api/events/{id}\",status=\"404\"} 1",
        "event_manager_http_request_duration_seconds_count{method=\"GET\",route=\"/api/events\",status=\"200\"} 1",
        "event_manager_http_request_duration_seconds_count{method=\"GET\",route=\"/api/events\",status=\"401\"} 1",
        "event_manager_db_pool_connections{pool=\"api\",state=\"waiting\"} 0",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(
        !text.contains(&id.to_string()),
        "raw paths must not become labels"
    );
    let size = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("event_manager_db_pool_connections{pool=\"api\",state=\"size\"} ")
        })
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap();
    assert!(size >= 1, "the API pool has opened a connection: {size}");
    // The scrape itself is recorded (once it has finished).
    eventually("the /metrics request to be counted", || async {
        let text = api.request("/metrics", None).await.text().await.unwrap();
        text.contains("route=\"/metrics\",status=\"200\"")
    })
    .await;
}

#[tokio::test]
async fn readiness_follows_the_database_and_the_consumer() {
    let api = TestApi::start().await;
    let (code, body) = api.get_as("/readyz", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["database"], true);
    let (code, body) = api.get_as("/healthz", None).await;
    assert_eq!((code, body), (StatusCode::OK, json!({"status": "ok"})));

    // A database that is down: a port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = EventStore::connect(&DatabaseConfig {
        url: format!("postgres://postgres@127.0.0.1:{closed}/eventdb")
            .parse()
            .unwrap(),
        pool_size: 2,
        connect_timeout: Duration::from_secs(1),
    })
    .unwrap();
    let down = TestApi::serve(
        None,
        store,
        ApiConfig::default(),
        auth_config(),
        Readiness::default(),
    )
    .await;
    let (code, body) = down.get_as("/readyz", None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["database"], false);
    assert_eq!(body["ready"], false);
    // The API says so too, without leaking details.
    let (code, body) = down.get("/api/events").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["type"], "unavailable");
    let (code, _) = down.get_as("/healthz", None).await;
    assert_eq!(code, StatusCode::OK, "alive even when not ready");

    // A consumer process is ready only with an assignment and fresh broker metadata.
    let readiness = Readiness::for_consumer();
    readiness.set_consumer_assigned(true);
    let consumer = TestApi::serve(
        None,
        api.db().store.clone(),
        ApiConfig::default(),
        auth_config(),
        readiness,
    )
    .await;
    let (code, body) = consumer.get_as("/readyz", None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["broker_metadata_fresh"], false);
    assert_eq!(body["consumer_assigned"], true);
}

#[test]
fn run_refuses_to_start_without_a_token_key() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_event-manager"))
        .arg("run")
        .env(
            "EM_PIPELINE__TOPICS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/topics"),
        )
        .env("EM_HTTP__BIND", "127.0.0.1:0")
        .env_remove("EM_CONFIG")
        .env_remove("EM_AUTH__HS256_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("config key `auth.hs256_secret`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn without_any_key_the_api_fails_closed() {
    let api = TestApi::start_with(ApiConfig::default(), AuthConfig::default()).await;
    let token = mint_token(
        &auth_config(),
        &["event:read".into()],
        Duration::from_secs(60),
        "x",
    )
    .unwrap();
    let (code, _) = api.get_as("/api/events", Some(&token)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn disabled_auth_serves_without_a_token() {
    let api = TestApi::start_with(
        ApiConfig::default(),
        AuthConfig {
            disabled: true,
            ..AuthConfig::default()
        },
    )
    .await;
    let (code, _) = api.get_as("/api/events", None).await;
    assert_eq!(code, StatusCode::OK);
}
