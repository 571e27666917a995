//! The list and count queries of every filter combination are served by indexes: `EXPLAIN` on a
//! seeded, analysed table never shows a sequential scan of `events`.

use chrono::{TimeZone, Utc};
use event_manager::api::events::parse_query;
use event_manager::config::ApiConfig;
use event_manager::store::event_queries::{list_sql, ListSql, API_SESSION_SETTINGS};

use event_manager::store::attribute_indexes::{properties_index_needed, value_index};

use crate::support::fresh_database;

/// 50 000 events, one a minute from 2024-01-01: five entity types, two event types, four status
/// values, and a rare attribute on one event in a thousand.
const SEED: &str = "
INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, changed_by,
                    source_topic, source_partition, source_offset, source_seq)
SELECT gen_random_uuid(),
       CASE WHEN i % 10 = 0 THEN 'StateChangeEvent' ELSE 'StatusChangeEvent' END,
       (ARRAY['Declaration','EmployeeRequest','MedicationRequest','Episode','Encounter'])[1 + i % 5],
       'e' || i,
       CASE WHEN i % 1000 = 0
            THEN jsonb_build_object('rare_attr', jsonb_build_object('new_value', 'x' || (i / 1000)))
            ELSE jsonb_build_object('status', jsonb_build_object('new_value',
                 (ARRAY['active','terminated','APPROVED','REJECTED'])[1 + i % 4])) END,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute',
       'u', 'seed', 0, i, 0
FROM generate_series(1, 50000) AS i
";

/// The statements of a list request made on 2024-06-01.
fn statements(query: &str, config: &ApiConfig) -> ListSql {
    let q = parse_query(
        Some(query),
        Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap(),
        config,
    )
    .unwrap_or_else(|e| panic!("{query}: {e}"));
    list_sql(&q, Vec::new())
}

async fn plans(
    client: &tokio_postgres::Client,
    query: &str,
    config: &ApiConfig,
) -> (String, String) {
    let sql = statements(query, config);
    let text = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let list = client
        .query_typed(&format!("EXPLAIN {}", sql.list), &sql.page_params())
        .await
        .unwrap();
    let count = client
        .query_typed(&format!("EXPLAIN {}", sql.count), &sql.count_params())
        .await
        .unwrap();
    (text(list), text(count))
}

/// The generic plans the handler's prepared statements get, in a session with the API pool's
/// settings (`API_SESSION_SETTINGS`: generic plans from the first execution, no bitmap scans):
/// the values do not matter, so NULLs do.
async fn generic_plans(
    client: &tokio_postgres::Client,
    query: &str,
    config: &ApiConfig,
) -> (String, String) {
    let sql = statements(query, config);
    assert!(sql.prepared_list, "{query}");
    let mut plans = Vec::new();
    for (name, statement, params) in [
        ("list", &sql.list, sql.page_params()),
        ("count", &sql.count, sql.count_params()),
    ] {
        let types: Vec<&str> = params.iter().map(|(_, t)| t.name()).collect();
        let nulls = vec!["NULL"; types.len()].join(", ");
        let settings: String = API_SESSION_SETTINGS
            .iter()
            .map(|(setting, value)| format!("SET {setting} = {value}; "))
            .collect();
        client
            .batch_execute(&format!(
                "{settings}DEALLOCATE ALL; PREPARE {name}({}) AS {statement}",
                types.join(", ")
            ))
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let rows = client
            .query(&format!("EXPLAIN EXECUTE {name}({nulls})"), &[])
            .await
            .unwrap();
        plans.push(
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        client
            .batch_execute("DEALLOCATE ALL; RESET ALL")
            .await
            .unwrap();
    }
    let count = plans.pop().unwrap_or_default();
    (plans.pop().unwrap_or_default(), count)
}

#[tokio::test]
async fn every_filter_combination_uses_an_index() {
    let db = fresh_database().await;
    let client = db.client().await;
    client.batch_execute(SEED).await.unwrap();
    // Its own statement: VACUUM cannot run in the implicit transaction of a batch.
    client.batch_execute("VACUUM ANALYZE events").await.unwrap();

    let window = "date=2024-01-10T10:00:00Z&date_to=2024-01-10T11:00:00Z";
    let config = ApiConfig::default();
    for event_type in ["", "&event_type=StateChangeEvent"] {
        for entity_type in ["", "&entity_type=Episode"] {
            for attribute in [
                "",
                "&attribute_name=status",
                "&attribute_name=status&new_value=APPROVED",
            ] {
                let query = format!("{window}{event_type}{entity_type}{attribute}");
                let (list, count) = plans(&client, &query, &config).await;
                let (generic_list, generic_count) = generic_plans(&client, &query, &config).await;
                for plan in [&list, &count, &generic_list, &generic_count] {
                    assert!(!plan.contains("Seq Scan on events"), "{query}:\n{plan}");
                    assert!(plan.contains("Index"), "{query}:\n{plan}");
                    // Within the period limit the time range leads, whatever the planner
                    // guesses about JSON keys.
                    assert!(!plan.contains("events_properties_"), "{query}:\n{plan}");
                }
                // The page reads its window in order and stops after the page, rather than
                // reading every row of the window to sort them (a generic plan guesses that a
                // window holds 0.5 % of the table; this one holds 60 rows of 50 000).
                assert!(!generic_list.contains("Sort"), "{query}:\n{generic_list}");
                // A value's total reads its per-minute and ten-minute counts by their keys.
                if attribute.contains("new_value") {
                    for plan in [&count, &generic_count] {
                        assert!(plan.contains("event_value_counts_pkey"), "{query}:\n{plan}");
                        assert!(
                            plan.contains("event_value_counts_10min_pkey"),
                            "{query}:\n{plan}"
                        );
                    }
                }
            }
        }
    }

    // Across a long period, a rare attribute or value is found through the GIN index on
    // `properties` (`jsonb_ops`, which serves both `?` and `@>`); the total comes from the
    // counts of V4, or for a value from the same GIN index. Only such periods use it, so V16
    // dropped it and `run` builds it where the configuration allows them.
    // (Without the default value index of `status`, which would serve its values instead.)
    let config = ApiConfig {
        events_list_max_period_hours: 24 * 366,
        indexed_values: Vec::new(),
        ..ApiConfig::default()
    };
    assert!(properties_index_needed(config.events_list_max_period_hours));
    assert!(!properties_index_needed(
        ApiConfig::default().events_list_max_period_hours
    ));
    assert!(!properties_index_needed(24));
    let year = "date=2024-01-01&date_to=2024-12-31";
    let rare = format!("{year}&attribute_name=rare_attr");
    let (list, _) = plans(&client, &rare, &config).await;
    assert!(!list.contains("events_properties_"), "{rare}:\n{list}");
    let report = db.store.ensure_api_indexes(&[], &[], true).await.unwrap();
    let built: Vec<&str> = report.built.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(built, ["events_properties_keys_idx"]);
    let again = db.store.ensure_api_indexes(&[], &[], true).await.unwrap();
    assert!(again.built.is_empty(), "{again:?}");
    client.batch_execute("ANALYZE events").await.unwrap();
    for (filter, index) in [
        ("&attribute_name=rare_attr", "events_properties_keys_idx"),
        (
            "&attribute_name=rare_attr&new_value=x7",
            "events_properties_keys_idx",
        ),
        (
            "&attribute_name=status&new_value=nobody-has-this",
            "events_properties_keys_idx",
        ),
    ] {
        let query = format!("{year}{filter}");
        let (list, count) = plans(&client, &query, &config).await;
        for plan in [&list, &count] {
            assert!(!plan.contains("Seq Scan on events"), "{query}:\n{plan}");
        }
        assert!(list.contains(index), "{query}:\n{list}");
        // Attributes are counted in event_counts. These values are not watched (no
        // `old_value`), so their totals are counted from the events, through the same index.
        let counted_by = if filter.contains("new_value") {
            index
        } else {
            "event_counts_pkey"
        };
        assert!(count.contains(counted_by), "{query}:\n{count}");
    }

    // And the API's answers on this table agree with plain SQL.
    let q = parse_query(
        Some(&format!("{year}&attribute_name=rare_attr")),
        Utc::now(),
        &config,
    )
    .unwrap();
    let sql = list_sql(&q, Vec::new());
    let n: i64 = client
        .query_typed(&sql.count, &sql.count_params())
        .await
        .unwrap()[0]
        .get(0);
    assert_eq!(n, 50);
}

/// A young table (an hour of events, one a second): a generic plan, which guesses that a window
/// holds 0.5 % of the table, expects a page's window to hold a row or two, and with bitmap scans
/// allowed reads every row of the window and sorts them (measured in the pipeline bench:
/// 320 ms a page). The API's sessions read the window's B-tree in order, whatever the table.
#[tokio::test]
async fn pages_of_a_young_table_are_read_in_order() {
    let db = fresh_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                                 changed_by, source_topic, source_partition, source_offset, \
                                 source_seq) \
             SELECT gen_random_uuid(), 'StatusChangeEvent', \
                    (ARRAY['Declaration','EmployeeRequest','MedicationRequest','Episode', \
                           'Encounter'])[1 + i % 5], \
                    'e' || i, \
                    jsonb_build_object('status', jsonb_build_object('new_value', 'APPROVED')), \
                    timestamptz '2024-01-10 10:00:00+00' + i * interval '1 second', \
                    'u', 'seed', 0, i, 0 \
             FROM generate_series(1, 3600) AS i",
        )
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE events").await.unwrap();
    let window = "date=2024-01-10T10:00:00Z&date_to=2024-01-10T11:00:00Z";
    for entity_type in ["", "&entity_type=Episode"] {
        for attribute in [
            "",
            "&attribute_name=status",
            "&attribute_name=status&new_value=APPROVED",
        ] {
            let query = format!("{window}{entity_type}{attribute}");
            let (list, _) = generic_plans(&client, &query, &ApiConfig::default()).await;
            assert!(!list.contains("Sort"), "{query}:\n{list}");
        }
    }
}

/// A young deployment: the count tables hold a few rows when the API's connections prepare
/// their statements. A generic plan made then would read a count table whole for every sum
/// (and keep doing so as it grows, until the next `ANALYZE`); the API's sessions read the
/// counts by their keys whatever the table holds.
#[tokio::test]
async fn totals_of_a_young_table_read_the_counts_by_their_keys() {
    let db = fresh_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                                 changed_by, source_topic, source_partition, source_offset, \
                                 source_seq) \
             SELECT gen_random_uuid(), 'StatusChangeEvent', 'Episode', 'e' || i, \
                    jsonb_build_object('status', \
                        jsonb_build_object('new_value', 'APPROVED', 'old_value', 'NEW')), \
                    timestamptz '2024-01-10 10:00:00+00' + i * interval '1 second', \
                    'u', 'seed', 0, i, 0 \
             FROM generate_series(1, 20) AS i",
        )
        .await
        .unwrap();
    client
        .batch_execute("VACUUM ANALYZE events, event_counts, event_value_counts")
        .await
        .unwrap();
    // Off minute boundaries, so that the ends are counted row by row too.
    let window = "date=2024-01-10T09:59:20Z&date_to=2024-01-10T10:59:20Z";
    for filter in [
        "",
        "&entity_type=Episode",
        "&attribute_name=status",
        "&attribute_name=status&new_value=APPROVED",
    ] {
        let query = format!("{window}{filter}");
        let (list, count) = generic_plans(&client, &query, &ApiConfig::default()).await;
        for plan in [&list, &count] {
            assert!(!plan.contains("Seq Scan"), "{query}:\n{plan}");
            let key = if filter.contains("new_value") {
                "event_value_counts_pkey"
            } else {
                "event_counts_pkey"
            };
            assert!(plan.contains(key), "{query}:\n{plan}");
        }
    }
}

/// With `api.indexed_attributes`, a filter on such an attribute reads its partial indexes
/// (`store::attribute_indexes`) in every window, and never the GIN indexes.
#[tokio::test]
async fn indexed_attributes_use_their_own_indexes() {
    let db = fresh_database().await;
    let client = db.client().await;
    client.batch_execute(SEED).await.unwrap();
    client.batch_execute("VACUUM ANALYZE events").await.unwrap();
    let attributes = vec!["rare_attr".to_owned(), "status".to_owned()];
    let config = ApiConfig {
        indexed_attributes: attributes.clone(),
        ..ApiConfig::default()
    };
    let window = "date=2024-01-10T10:00:00Z&date_to=2024-01-10T11:00:00Z";
    // Before their indexes exist (being built, or the build failed) the time range leads, as for
    // other attributes; never the GIN indexes, which for `status` would mean every event.
    for filter in [
        "&attribute_name=status",
        "&attribute_name=status&new_value=APPROVED",
        "&attribute_name=rare_attr&new_value=x7",
    ] {
        let query = format!("{window}{filter}");
        let (list, count) = generic_plans(&client, &query, &config).await;
        for plan in [&list, &count] {
            assert!(!plan.contains("Seq Scan on events"), "{query}:\n{plan}");
            assert!(!plan.contains("events_properties_"), "{query}:\n{plan}");
        }
        assert!(list.contains("events_event_time_idx"), "{query}:\n{list}");
    }
    let report = db
        .store
        .ensure_api_indexes(&attributes, &[], false)
        .await
        .unwrap();
    assert_eq!(report.built.len(), 4, "{report:?}");
    client.batch_execute("VACUUM ANALYZE events").await.unwrap();
    let [rare_time, rare_value] =
        event_manager::store::attribute_indexes::attribute_indexes("rare_attr").map(|i| i.name);
    let [_, status_value] =
        event_manager::store::attribute_indexes::attribute_indexes("status").map(|i| i.name);

    for (filter, page_index, count_index) in [
        ("&attribute_name=rare_attr", Some(&rare_time), None),
        (
            "&attribute_name=rare_attr&new_value=x7",
            Some(&rare_value),
            // Not watched: counted from the events, through the same index.
            Some(&rare_value),
        ),
        // In nearly every event: its index or the time range's, as the planner likes.
        ("&attribute_name=status", None, None),
        // The entity type's index may lead.
        ("&attribute_name=status&entity_type=Episode", None, None),
        (
            "&attribute_name=status&new_value=APPROVED",
            Some(&status_value),
            None,
        ),
    ] {
        let query = format!("{window}{filter}");
        let (list, count) = generic_plans(&client, &query, &config).await;
        for plan in [&list, &count] {
            assert!(!plan.contains("Seq Scan on events"), "{query}:\n{plan}");
            assert!(!plan.contains("events_properties_"), "{query}:\n{plan}");
        }
        if let Some(index) = page_index {
            assert!(list.contains(index.as_str()), "{query}:\n{list}");
        }
        if let Some(index) = count_index {
            assert!(count.contains(index.as_str()), "{query}:\n{count}");
        }
    }
    // A long window too (planned for its values).
    let config = ApiConfig {
        events_list_max_period_hours: 24 * 366,
        ..config
    };
    for (filter, index) in [
        ("&attribute_name=rare_attr", &rare_time),
        ("&attribute_name=rare_attr&new_value=x7", &rare_value),
    ] {
        let query = format!("date=2024-01-01&date_to=2024-12-31{filter}");
        let (list, _) = plans(&client, &query, &config).await;
        assert!(list.contains(index.as_str()), "{query}:\n{list}");
    }

    // Built once; an index left invalid by an interrupted build is built again.
    let again = db
        .store
        .ensure_api_indexes(&attributes, &[], false)
        .await
        .unwrap();
    assert!(again.built.is_empty() && !again.skipped_busy, "{again:?}");
    client
        .execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass($1)",
            &[&rare_value],
        )
        .await
        .unwrap();
    let rebuilt = db
        .store
        .ensure_api_indexes(&attributes, &[], false)
        .await
        .unwrap();
    let names: Vec<&str> = rebuilt.built.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, [rare_value.as_str()]);
}

/// By default `status` has the index of its values (`api.indexed_values`) and no other: a
/// value's page reads that index, `attribute_name=status` alone the time range.
#[tokio::test]
async fn status_values_are_indexed_by_default() {
    let db = fresh_database().await;
    let client = db.client().await;
    client.batch_execute(SEED).await.unwrap();
    let config = ApiConfig::default();
    let report = db
        .store
        .ensure_api_indexes(&config.indexed_attributes, &config.indexed_values, false)
        .await
        .unwrap();
    let value = value_index("status").name;
    let built: Vec<&str> = report.built.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(built, [value.as_str()]);
    client.batch_execute("VACUUM ANALYZE events").await.unwrap();
    let window = "date=2024-01-10T10:00:00Z&date_to=2024-01-10T11:00:00Z";
    for (filter, index) in [
        ("&attribute_name=status&new_value=APPROVED", value.as_str()),
        ("&attribute_name=status", "events_event_time_idx"),
    ] {
        let query = format!("{window}{filter}");
        let (list, count) = generic_plans(&client, &query, &config).await;
        for plan in [&list, &count] {
            assert!(!plan.contains("Seq Scan on events"), "{query}:\n{plan}");
        }
        assert!(list.contains(index), "{query}:\n{list}");
        assert!(!list.contains("Sort"), "{query}:\n{list}");
    }
}
