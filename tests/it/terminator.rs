//! The terminator against real PostgreSQL: rules, boundaries, dry runs, the replica lock,
//! concurrent ingestion, the cron job, state pruning and failures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_manager::metrics::TerminatorMetrics;
use event_manager::terminator::{
    CronSchedule, RunOutcome, Terminator, TerminatorConfig, TerminatorSchedule,
};
use prometheus::Registry;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{counts_unlike_a_recount, fresh_database, v7_sql, TestDatabase};

const DAY: Duration = Duration::from_secs(86_400);

fn rules(max_time: Option<Duration>, max_number: Option<u64>) -> TerminatorConfig {
    TerminatorConfig {
        event_max_time: max_time,
        event_max_number: max_number,
        batch_size: 7,
        ..TerminatorConfig::default()
    }
}

fn terminator(db: &TestDatabase, config: TerminatorConfig) -> (Terminator, TerminatorMetrics) {
    let metrics = TerminatorMetrics::register(&Registry::new()).unwrap();
    (
        Terminator::new(db.store.clone(), config, metrics.clone()),
        metrics,
    )
}

fn ago(d: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(d).unwrap()
}

/// A UUID v7 of the millisecond of `at`, as the store makes event ids (the terminator reads
/// insertion time from them): `counter` in the low bits keeps the ids of one instant in order.
fn v7_at(at: DateTime<Utc>, counter: usize) -> Uuid {
    let ms = at.timestamp_millis() as u128;
    Uuid::from_u128((ms << 80) | (0x7 << 76) | (0b10 << 62) | counter as u128)
}

/// Inserts `ids.len()` events stamped `inserted_at` (database `now()` when `None`).
async fn insert_with_ids(client: &Client, ids: &[Uuid], inserted_at: Option<DateTime<Utc>>) {
    let topic = Uuid::now_v7().to_string();
    client
        .execute(
            "INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                                 inserted_at, source_topic, source_partition, source_offset, source_seq) \
             SELECT id, 'StatusChangeEvent', 'Declaration', id::text, \
                    '{\"status\": {\"new_value\": \"active\", \"old_value\": null}}', now(), \
                    coalesce($2, now()), $3, 0, n, 0 \
             FROM UNNEST($1::uuid[]) WITH ORDINALITY AS u(id, n)",
            &[&ids, &inserted_at, &topic],
        )
        .await
        .unwrap();
}

/// Inserts `n` events made at `inserted_at` (now when `None`), their ids of that millisecond in
/// the order returned.
async fn insert(client: &Client, n: usize, inserted_at: Option<DateTime<Utc>>) -> Vec<Uuid> {
    let ids: Vec<Uuid> = match inserted_at {
        Some(at) => (0..n).map(|i| v7_at(at, i)).collect(),
        None => (0..n).map(|_| Uuid::now_v7()).collect(),
    };
    insert_with_ids(client, &ids, inserted_at).await;
    ids
}

async fn ids_left(client: &Client) -> Vec<Uuid> {
    client
        .query("SELECT id FROM events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn count(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0)
}

fn runs(m: &TerminatorMetrics, result: &str) -> u64 {
    m.runs.with_label_values(&[result]).get()
}

fn deleted(m: &TerminatorMetrics, reason: &str) -> u64 {
    m.deleted.with_label_values(&[reason]).get()
}

#[tokio::test]
async fn terminator_age_rule_deletes_only_expired_events() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 25, Some(ago(40 * DAY))).await;
    let recent = insert(&client, 10, Some(ago(DAY))).await;

    let (t, m) = terminator(&db, rules(Some(30 * DAY), None));
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();

    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!((report.deleted_by_age, report.deleted_by_count), (25, 0));
    assert_eq!(ids_left(&client).await, recent);
    assert_eq!(deleted(&m, "age"), 25);
    assert_eq!(runs(&m, "success"), 1);
    assert!(m.last_success.get() > 0.0);
    assert_eq!(m.duration.get_sample_count(), 1);
}

#[tokio::test]
async fn terminator_count_rule_keeps_the_newest() {
    let db = fresh_database().await;
    let client = db.client().await;
    let mut all = Vec::new();
    for minutes in (1..=30u64).rev() {
        all.extend(insert(&client, 1, Some(ago(Duration::from_secs(minutes * 60)))).await);
    }

    let (t, m) = terminator(&db, rules(None, Some(10)));
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();

    assert_eq!((report.deleted_by_age, report.deleted_by_count), (0, 20));
    assert_eq!(ids_left(&client).await, all[20..]);
    assert_eq!(deleted(&m, "count"), 20);
}

#[tokio::test]
async fn terminator_count_rule_follows_the_ids_not_the_rows_order() {
    let db = fresh_database().await;
    let client = db.client().await;
    let same = Some(ago(DAY));
    let ids: Vec<Uuid> = (1..=6).map(|i| v7_at(ago(DAY), i)).collect();
    // The order the rows were written in does not matter, nor `inserted_at`: only the ids'.
    let shuffled = [ids[3], ids[0], ids[5], ids[1], ids[4], ids[2]];
    insert_with_ids(&client, &shuffled, same).await;

    let (t, _) = terminator(&db, rules(None, Some(4)));
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();

    assert_eq!(report.deleted_by_count, 2);
    assert_eq!(ids_left(&client).await, ids[2..]);
}

#[tokio::test]
async fn terminator_applies_age_then_count() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 20, Some(ago(40 * DAY))).await;
    let mut recent = Vec::new();
    for hours in (1..=15u64).rev() {
        recent.extend(insert(&client, 1, Some(ago(Duration::from_secs(hours * 3600)))).await);
    }

    let (t, m) = terminator(&db, rules(Some(30 * DAY), Some(10)));
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();

    assert_eq!((report.deleted_by_age, report.deleted_by_count), (20, 5));
    assert_eq!(ids_left(&client).await, recent[5..]);
    assert_eq!((deleted(&m, "age"), deleted(&m, "count")), (20, 5));
}

#[tokio::test]
async fn terminator_boundaries_exactly_n_and_just_around_the_age() {
    let db = fresh_database().await;
    let client = db.client().await;
    // Just older than 30 days at insertion is older still when the run reads the clock; the
    // row one minute inside the limit stays inside it for the few seconds the test takes.
    let expired = insert(&client, 1, Some(ago(30 * DAY + Duration::from_millis(1)))).await;
    let inside = insert(&client, 1, Some(ago(30 * DAY - Duration::from_secs(60)))).await;
    let newer = insert(&client, 4, None).await;

    // Exactly N events after the age rule: the count rule deletes nothing.
    let (t, _) = terminator(&db, rules(Some(30 * DAY), Some(5)));
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!((report.deleted_by_age, report.deleted_by_count), (1, 0));
    let left = ids_left(&client).await;
    assert!(!left.contains(&expired[0]));
    assert_eq!(left.len(), 5);

    // N + 1: exactly one goes, the oldest.
    insert(&client, 1, None).await;
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.deleted_by_count, 1);
    let left = ids_left(&client).await;
    assert!(!left.contains(&inside[0]));
    assert!(newer.iter().all(|id| left.contains(id)));

    // A limit of one keeps exactly the newest row.
    let (t, _) = terminator(&db, rules(None, Some(1)));
    let last = insert(&client, 1, None).await;
    t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!(ids_left(&client).await, last);
}

#[tokio::test]
async fn terminator_disabled_rules_delete_nothing() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 12, Some(ago(400 * DAY))).await;

    let (t, m) = terminator(&db, rules(None, None));
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();

    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(
        (
            report.deleted_by_age,
            report.deleted_by_count,
            report.deleted_state
        ),
        (0, 0, 0)
    );
    assert_eq!(report.age_cutoff, None);
    assert_eq!(count(&client).await, 12);
    assert_eq!(runs(&m, "success"), 1);
}

#[tokio::test]
async fn terminator_dry_run_deletes_nothing_and_reports_the_same_numbers() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 23, Some(ago(40 * DAY))).await;
    insert(&client, 17, Some(ago(DAY))).await;
    let (t, m) = terminator(&db, rules(Some(30 * DAY), Some(9)));

    let dry = t.run_once(true, &CancellationToken::new()).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.deleted_by_age, dry.deleted_by_count), (23, 8));
    assert_eq!(count(&client).await, 40);
    assert_eq!(
        dry.to_string(),
        "would delete 23 by age, 8 by count, 0 stale state rows"
    );
    // A dry run counts nothing.
    assert_eq!(
        runs(&m, "success") + deleted(&m, "age") + deleted(&m, "count"),
        0
    );

    let real = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!(
        (real.deleted_by_age, real.deleted_by_count),
        (dry.deleted_by_age, dry.deleted_by_count)
    );
    assert_eq!(count(&client).await, 9);
}

#[tokio::test]
async fn terminator_second_replica_skips_while_the_lock_is_held() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 8, Some(ago(40 * DAY))).await;
    let config = rules(Some(30 * DAY), None);
    let (t, m) = terminator(&db, config.clone());

    // Another replica, mid-run, holds the lock on its session.
    let other = db.client().await;
    other
        .execute("SELECT pg_advisory_lock($1)", &[&config.lock_key])
        .await
        .unwrap();
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.outcome, RunOutcome::Skipped);
    assert_eq!(report.deleted_by_age, 0);
    assert_eq!(count(&client).await, 8);
    assert_eq!((runs(&m, "skipped"), runs(&m, "success")), (1, 0));

    other
        .execute("SELECT pg_advisory_unlock($1)", &[&config.lock_key])
        .await
        .unwrap();
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(report.deleted_by_age, 8);

    // The lock is released after the run: a plain session can take it at once.
    let free: bool = other
        .query_one("SELECT pg_try_advisory_lock($1)", &[&config.lock_key])
        .await
        .unwrap()
        .get(0);
    assert!(free);
}

#[tokio::test]
async fn terminator_two_replicas_at_once_delete_each_row_once() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 3000, Some(ago(40 * DAY))).await;
    let config = TerminatorConfig {
        batch_size: 100,
        ..rules(Some(30 * DAY), None)
    };
    let (a, ma) = terminator(&db, config.clone());
    let (b, mb) = terminator(&db, config);
    let token = CancellationToken::new();
    let (ra, rb) = tokio::join!(a.run_once(false, &token), b.run_once(false, &token));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());

    assert_eq!(ra.deleted_by_age + rb.deleted_by_age, 3000);
    assert_eq!(count(&client).await, 0);
    // Whether they overlapped or not, no run failed and each counted what it did.
    assert_eq!(runs(&ma, "failure") + runs(&mb, "failure"), 0);
    assert_eq!(deleted(&ma, "age") + deleted(&mb, "age"), 3000);
    for (r, m) in [(&ra, &ma), (&rb, &mb)] {
        if r.outcome == RunOutcome::Skipped {
            assert_eq!(runs(m, "skipped"), 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminator_concurrent_ingestion_loses_no_new_event() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 20_000, Some(ago(40 * DAY))).await;
    insert(&client, 3_000, Some(ago(Duration::from_secs(3600)))).await;
    let config = TerminatorConfig {
        batch_size: 500,
        ..rules(Some(30 * DAY), Some(2_000))
    };
    let (t, _) = terminator(&db, config);

    // Ingestion keeps inserting (fewer than event_max_number rows, so none of them is beyond
    // the limit) until the run is over.
    let done = Arc::new(AtomicBool::new(false));
    let ingest = {
        let done = done.clone();
        let client = db.client().await;
        tokio::spawn(async move {
            let mut ids = Vec::new();
            while !done.load(Ordering::Acquire) && ids.len() < 1_900 {
                ids.extend(insert(&client, 20, None).await);
                tokio::task::yield_now().await;
            }
            ids
        })
    };
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    done.store(true, Ordering::Release);
    let new_ids = ingest.await.unwrap();

    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(report.deleted_by_age, 20_000);
    assert!(new_ids.len() >= 40, "ingestion ran alongside the deletes");
    let left = ids_left(&client).await;
    let missing = new_ids.iter().filter(|id| !left.contains(id)).count();
    assert_eq!(missing, 0, "new events lost");
    let expired: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE inserted_at < now() - interval '30 days'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expired, 0);
    assert!(report.deleted_by_count >= 1_000);
}

#[tokio::test]
async fn terminator_cron_schedule_fires() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 30, Some(ago(40 * DAY))).await;
    let (t, m) = terminator(&db, rules(Some(30 * DAY), None));
    let shutdown = CancellationToken::new();
    let every_second = "*/1 * * * * *".parse().unwrap();
    let schedule = TerminatorSchedule::start(t, &every_second, shutdown.clone())
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while runs(&m, "success") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not run within 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&client).await, 0);
    assert_eq!(deleted(&m, "age"), 30);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), schedule.stop())
        .await
        .expect("the schedule stops promptly")
        .unwrap();
    // Stopped means no more runs: a negative check can only wait, for longer than the period.
    let after = runs(&m, "success") + runs(&m, "skipped") + runs(&m, "interrupted");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        runs(&m, "success") + runs(&m, "skipped") + runs(&m, "interrupted"),
        after
    );
}

#[tokio::test]
async fn terminator_schedule_rejects_a_bad_expression() {
    let e = "0 3 * * *".parse::<CronSchedule>().unwrap_err().to_string();
    assert!(
        e.contains("0 3 * * *") && e.contains("6 or 7 fields"),
        "{e}"
    );
}

async fn state_row(client: &Client, entity: &str, attribute: &str, updated: DateTime<Utc>) {
    client
        .execute(
            "INSERT INTO entity_state (entity_type, entity_id, attribute, value, event_time, updated_at) \
             VALUES ('Declaration', $1, $2, 'active', $3, $3)",
            &[&entity, &attribute, &updated],
        )
        .await
        .unwrap();
}

async fn state_entities(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT entity_id || '.' || attribute FROM entity_state ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn terminator_keeps_state_with_old_events_and_prunes_only_untouched_entities() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 5, Some(ago(400 * DAY))).await;
    state_row(&client, "old", "status", ago(400 * DAY)).await;
    state_row(&client, "old", "context", ago(300 * DAY)).await;
    state_row(&client, "mixed", "status", ago(400 * DAY)).await;
    state_row(&client, "mixed", "context", ago(DAY)).await;
    state_row(&client, "fresh", "status", ago(DAY)).await;

    // Without a horizon, expiring events leaves all state alone.
    let (t, _) = terminator(&db, rules(Some(30 * DAY), None));
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!((report.deleted_by_age, report.deleted_state), (5, 0));
    assert_eq!(state_entities(&client).await.len(), 5);
    // The prune count the consumers' state caches follow (sql/V17) moves only with a prune.
    let prunes = || async {
        let row = client
            .query_one("SELECT last_value, is_called FROM entity_state_prunes", &[])
            .await
            .unwrap();
        row.get::<_, bool>(1).then(|| row.get::<_, i64>(0))
    };
    assert_eq!(prunes().await, None);

    let (t, m) = terminator(
        &db,
        TerminatorConfig {
            state_horizon: Some(180 * DAY),
            batch_size: 1,
            ..rules(Some(30 * DAY), None)
        },
    );
    let dry = t.run_once(true, &CancellationToken::new()).await.unwrap();
    assert_eq!(dry.deleted_state, 2);
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.deleted_state, 2);
    assert_eq!(deleted(&m, "state"), 2);
    assert_eq!(
        state_entities(&client).await,
        ["fresh.status", "mixed.context", "mixed.status"]
    );
    // Two statements pruned a row each (batch size 1), the last found nothing.
    assert_eq!(prunes().await, Some(2));
}

#[tokio::test]
async fn terminator_failure_is_counted_and_the_next_run_retries() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 4, Some(ago(40 * DAY))).await;
    let (t, m) = terminator(&db, rules(Some(30 * DAY), None));

    client
        .batch_execute("ALTER TABLE events RENAME TO events_away")
        .await
        .unwrap();
    let err = t
        .run_once(false, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("database error (age)"), "{err}");
    assert_eq!(runs(&m, "failure"), 1);
    assert!(m.last_failure.get() > 0.0);
    assert_eq!(m.last_success.get(), 0.0);

    client
        .batch_execute("ALTER TABLE events_away RENAME TO events")
        .await
        .unwrap();
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.deleted_by_age, 4);
    assert_eq!(runs(&m, "success"), 1);
    // The failed run released its lock.
    let free: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&t.config().lock_key])
        .await
        .unwrap()
        .get(0);
    assert!(free);
}

#[tokio::test]
async fn terminator_stops_between_batches_on_shutdown() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 10, Some(ago(40 * DAY))).await;
    let (t, m) = terminator(&db, rules(Some(30 * DAY), None));
    let cancelled = CancellationToken::new();
    cancelled.cancel();

    let report = t.run_once(false, &cancelled).await.unwrap();
    assert_eq!(report.outcome, RunOutcome::Interrupted);
    assert_eq!(count(&client).await, 10);
    assert_eq!((runs(&m, "interrupted"), m.last_success.get()), (1, 0.0));

    // The next run picks up where it stopped.
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.deleted_by_age, 10);
}

#[tokio::test]
async fn terminator_cli_dry_run_prints_and_keeps_everything() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 3, Some(ago(40 * DAY))).await;
    insert(&client, 4, Some(ago(DAY))).await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-manager"))
        .args(["terminate", "--dry-run"])
        .env_remove("EM_CONFIG")
        .env("DATABASE_URL", &db.url)
        .env("EM_TERMINATOR__EVENT_MAX_NUMBER", "2")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "would delete 3 by age, 2 by count, 0 stale state rows"
    );
    assert_eq!(count(&client).await, 7);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-manager"))
        .args(["terminate"])
        .env_remove("EM_CONFIG")
        .env("DATABASE_URL", &db.url)
        .env("EM_TERMINATOR__EVENT_MAX_NUMBER", "2")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deleted 3 by age, 2 by count, 0 stale state rows"
    );
    assert_eq!(count(&client).await, 2);
}

#[tokio::test]
async fn terminator_app_schedules_it_when_enabled_and_exports_the_metrics() {
    let db = fresh_database().await;
    let client = db.client().await;
    insert(&client, 5, Some(ago(40 * DAY))).await;
    let mut config = event_manager::config::Config {
        database: db.config.clone(),
        ..Default::default()
    };
    config.terminator.enabled = false;
    let app = event_manager::app::App::build(config.clone()).unwrap();
    let shutdown = CancellationToken::new();
    assert!(app.start_terminator(&shutdown).await.unwrap().is_none());

    config.terminator.schedule = "*/1 * * * * *".parse().unwrap();
    config.terminator.enabled = true;
    let app = event_manager::app::App::build(config).unwrap();
    let schedule = app.start_terminator(&shutdown).await.unwrap().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while runs(&app.terminator_metrics, "success") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no run within 30s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    schedule.stop().await.unwrap();
    assert_eq!(count(&client).await, 0);

    let names: Vec<String> = app
        .registry
        .gather()
        .iter()
        .map(|f| f.name().to_owned())
        .filter(|n| n.contains("terminator"))
        .collect();
    for name in [
        "event_manager_terminator_deleted_total",
        "event_manager_terminator_duration_seconds",
        "event_manager_terminator_last_success_timestamp_seconds",
        "event_manager_terminator_runs_total",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    // Registered even before any failure, so dashboards see it from the start.
    assert!(names
        .iter()
        .any(|n| n == "event_manager_terminator_last_failure_timestamp_seconds"));
}

/// 3 000 events inserted 40 days ago, with event times over about two hours and the attribute
/// shapes the count tables treat differently: watched values, captured values, long values,
/// non-string and non-object values.
fn seed_expired() -> String {
    format!("
INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, changed_by,
                    inserted_at, source_topic, source_partition, source_offset, source_seq)
SELECT {},
       CASE WHEN i % 7 = 0 THEN 'StateChangeEvent' ELSE 'StatusChangeEvent' END,
       (ARRAY['Episode','Encounter','Declaration'])[1 + i % 3],
       'e' || i,
       CASE i % 5
            WHEN 0 THEN jsonb_build_object('status', jsonb_build_object('new_value', 'APPROVED', 'old_value', 'NEW'))
            WHEN 1 THEN jsonb_build_object('status', jsonb_build_object('new_value', 'REJECTED', 'old_value', NULL),
                                           'employee_id', jsonb_build_object('new_value', 'emp' || i))
            WHEN 2 THEN jsonb_build_object('note', jsonb_build_object('new_value', repeat('x', 300), 'old_value', NULL))
            WHEN 3 THEN jsonb_build_object('status', 'APPROVED', 'score', jsonb_build_object('new_value', i % 3))
            ELSE '[]'::jsonb END,
       timestamptz '2024-03-01 08:00:00+00' + (i * 2.3) * interval '1 second',
       'u', now() - interval '40 days', 'seed', 0, i, 0
FROM generate_series(1, 3000) AS i
",
        v7_sql("now() - interval '40 days'")
    )
}

/// The terminator subtracts the counts of exactly the rows it deletes (sql/V11, its batch
/// statement in src/store/retention.rs) while the store's batches add events to the same minutes
/// and another session deletes expired rows too (subtracted by the delete trigger): afterwards
/// every count table equals a recount of the events left, and no count row is left at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminator_keeps_the_counts_exact_beside_ingestion_and_other_deletes() {
    use event_manager::detect::DetectedEvent;
    use event_manager::model::SourceRef;
    use event_manager::store::{BatchChanges, NewEvent};

    let db = fresh_database().await;
    let client = db.client().await;
    client.batch_execute(&seed_expired()).await.unwrap();
    let config = TerminatorConfig {
        batch_size: 200,
        batch_pause: Duration::ZERO,
        ..rules(Some(30 * DAY), None)
    };
    let (t, _) = terminator(&db, config);

    let done = Arc::new(AtomicBool::new(false));
    // Ingestion through the store (which counts its own rows), with event times in the minutes
    // being deleted, so the run decrements count rows that ingestion keeps alive.
    let ingest = {
        let (done, store) = (done.clone(), db.store.clone());
        tokio::spawn(async move {
            let mut offset = 0i64;
            loop {
                let events = (0..40)
                    .map(|i| NewEvent {
                        event: DetectedEvent {
                            event_type: "StatusChangeEvent".into(),
                            entity_type: ["Episode", "Encounter"][i % 2].into(),
                            entity_id: format!("n{offset}-{i}"),
                            properties: serde_json::json!({
                                "status": {"new_value": "APPROVED", "old_value": "NEW"},
                                "employee_id": {"new_value": format!("emp{i}")},
                            }),
                            event_time: "2024-03-01T08:00:00Z".parse::<DateTime<Utc>>().unwrap()
                                + chrono::Duration::seconds((offset + i as i64) * 97 % 6_900),
                            changed_by: None,
                        },
                        source: SourceRef {
                            topic: "live".into(),
                            partition: 0,
                            offset: offset + i as i64,
                        },
                        seq: 0,
                    })
                    .collect();
                store
                    .apply_batch("g", &[], &[], |_| BatchChanges {
                        events,
                        states: Vec::new(),
                    })
                    .await
                    .unwrap();
                offset += 40;
                if done.load(Ordering::Acquire) || offset >= 4_000 {
                    return offset;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    // Another deleter: deletes of expired rows, subtracted by the trigger, some of them rows the
    // terminator is about to delete.
    let other = {
        let client = db.client().await;
        tokio::spawn(async move {
            let mut deleted = 0;
            for k in 0..3i64 {
                deleted += client
                    .execute(
                        "DELETE FROM events WHERE source_topic = 'seed' \
                           AND source_offset % 10 = $1",
                        &[&k],
                    )
                    .await
                    .unwrap();
            }
            deleted
        })
    };
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    done.store(true, Ordering::Release);
    let ingested = ingest.await.unwrap();
    let deleted_by_other = other.await.unwrap();

    assert_eq!(report.outcome, RunOutcome::Completed);
    assert_eq!(report.deleted_by_age + deleted_by_other, 3_000);
    assert!(report.deleted_by_age >= 2_100);
    let differ = counts_unlike_a_recount(&client).await;
    assert!(
        differ.is_empty(),
        "counts differ from a recount: {differ:#?}"
    );
    let empty: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM event_counts WHERE n <= 0) \
                  + (SELECT count(*) FROM event_value_counts WHERE n <= 0) \
                  + (SELECT count(*) FROM event_value_counts_10min WHERE n <= 0)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(empty, 0, "count rows left at zero");
    let left: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, ingested);
}

/// Events whose time is before the count buckets' origin (2001-01-01, where the store leaves
/// counting to the trigger on insert) and just after it, with a multi-byte value of exactly 256
/// characters: the terminator subtracts their counts in the database's own buckets, and the
/// count tables equal a recount afterwards, in batches that end mid-minute.
#[tokio::test]
async fn terminator_subtracts_the_counts_of_events_before_the_count_origin() {
    let db = fresh_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            &format!("INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                                 inserted_at, source_topic, source_partition, source_offset, source_seq) \
             SELECT {}, 'StatusChangeEvent', 'Declaration', 'e' || i, \
                    jsonb_build_object('status', jsonb_build_object( \
                        'new_value', CASE WHEN i % 2 = 0 THEN repeat('é', 256) ELSE 'ok' END, \
                        'old_value', 'x')), \
                    timestamptz '2000-12-31 23:41:00+00' + (i * 37) * interval '1 second', \
                    now() - interval '40 days' + i * interval '1 millisecond', 'old', 0, i, 0 \
             FROM generate_series(1, 90) AS i",
                v7_sql("now() - interval '40 days' + i * interval '1 millisecond'")
            ),
        )
        .await
        .unwrap();
    // Live events in some of the same buckets, which must keep their counts.
    client
        .batch_execute(&format!(
            "INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                                 source_topic, source_partition, source_offset, source_seq) \
             SELECT {}, 'StatusChangeEvent', 'Declaration', 'l' || i, \
                    '{{\"status\": {{\"new_value\": \"ok\", \"old_value\": \"x\"}}}}', \
                    timestamptz '2000-12-31 23:50:00+00' + (i * 60) * interval '1 second', \
                    'live', 0, i, 0 \
             FROM generate_series(1, 20) AS i",
            v7_sql("now()")
        ))
        .await
        .unwrap();
    let (t, _) = terminator(&db, rules(Some(30 * DAY), None));
    let report = t.run_once(false, &CancellationToken::new()).await.unwrap();
    assert_eq!(report.deleted_by_age, 90);
    let differ = counts_unlike_a_recount(&client).await;
    assert!(
        differ.is_empty(),
        "counts differ from a recount: {differ:#?}"
    );
    assert_eq!(count(&client).await, 20);
}
