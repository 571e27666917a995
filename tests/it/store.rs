//! The batch transaction against real PostgreSQL: fences, state and events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use event_manager::detect::{ChangeDetector, DetectOptions, StateWrite};
use event_manager::model::{Attributes, Observation, ObservationKind, Scope, SourceRef};
use event_manager::store::{
    Alone, BatchChanges, BatchReport, CacheUse, Handover, NewEvent, OffsetFence, StateCache,
    StoreError, Turn,
};

use crate::support::{counts_unlike_a_recount, fresh_database};

fn obs(id: &str, status: &str, sec: i64) -> Observation {
    Observation {
        event_type: "StatusChangeEvent".into(),
        entity_type: "Declaration".into(),
        entity_id: id.into(),
        kind: ObservationKind::Snapshot,
        attributes: Attributes::from([("status".to_owned(), Some(status.to_owned()))]),
        captured: BTreeMap::new(),
        event_time: Utc.timestamp_opt(1_700_000_000 + sec, 0).unwrap(),
        changed_by: None,
        version: None,
        scope: Scope::Unscoped,
    }
}

async fn apply(
    db: &crate::support::TestDatabase,
    fence: OffsetFence,
    observations: &[Observation],
) -> Result<u64, StoreError> {
    let entities = entities_of(observations);
    let first = fence.expected.unwrap_or(0);
    let report = db
        .store
        .apply_batch("g", &[fence], &entities, |states| {
            detect_all(observations, first, states)
        })
        .await?;
    Ok(report.events_inserted)
}

/// [`apply`] behind a batch in flight, which commits or not, with what it handed over.
async fn apply_behind(
    db: &crate::support::TestDatabase,
    fence: OffsetFence,
    observations: &[Observation],
    committed: bool,
    handover: Vec<Arc<Handover>>,
) -> Result<BatchReport, StoreError> {
    let first = fence.expected.unwrap_or(0);
    db.store
        .apply_batch_in_turn(
            "g",
            &[fence],
            &entities_of(observations),
            |states| detect_all(observations, first, states),
            Turn {
                detected: |_| {},
                after: Some(move || async move { committed }),
                handover,
            },
            None,
        )
        .await
}

fn entities_of(observations: &[Observation]) -> Vec<(String, String)> {
    observations
        .iter()
        .map(|o| (o.entity_type.to_string(), o.entity_id.clone()))
        .collect()
}

/// Detection of one observation per message on partition 0 of "t" from offset `first`, with
/// the default detector.
fn detect_all(
    observations: &[Observation],
    first: i64,
    states: &mut event_manager::detect::StateMap,
) -> BatchChanges {
    detect_on(0, observations, first, states)
}

/// [`detect_all`] on another partition of "t".
fn detect_on(
    partition: i32,
    observations: &[Observation],
    first: i64,
    states: &mut event_manager::detect::StateMap,
) -> BatchChanges {
    let detector = ChangeDetector::new(DetectOptions::default());
    let mut changes = BatchChanges::default();
    for (i, o) in observations.iter().enumerate() {
        let at = SourceRef {
            topic: "t".into(),
            partition,
            offset: first + i as i64,
        };
        let d = detector.detect(o, &at, states);
        if let Some(event) = d.event {
            changes.events.push(NewEvent {
                event,
                source: at.clone(),
                seq: 0,
            });
        }
        // Each attribute once, with its state before the batch and its final state.
        for (key, replaced) in d.dirty {
            let state = states[&key].clone();
            match changes.states.iter_mut().find(|w| w.key == key) {
                Some(w) => w.state = state,
                None => changes.states.push(StateWrite {
                    key,
                    state,
                    before: replaced,
                }),
            }
        }
    }
    changes
}

/// The stored next offset of group "g" on partition 0 of "t".
async fn stored_position(db: &crate::support::TestDatabase) -> i64 {
    let offsets = db
        .store
        .load_offsets("g", &[("t".into(), 0)])
        .await
        .unwrap();
    offsets[&("t".to_owned(), 0)]
}

fn fence(expected: Option<i64>, next: i64) -> OffsetFence {
    OffsetFence {
        topic: "t".into(),
        partition: 0,
        expected,
        next,
    }
}

#[tokio::test]
async fn baseline_then_change_then_fenced_zombie() {
    let db = fresh_database().await;
    assert_eq!(
        apply(
            &db,
            fence(None, 2),
            &[obs("a", "active", 0), obs("b", "active", 0)]
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(
        apply(
            &db,
            fence(Some(2), 4),
            &[obs("a", "terminated", 1), obs("a", "terminated", 2)]
        )
        .await
        .unwrap(),
        1
    );

    // A zombie still believing in offset 2 cannot write, and nothing of its batch lands.
    let err = apply(&db, fence(Some(2), 3), &[obs("b", "closed", 3)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    // A second consumer starting without a stored offset is fenced too.
    let err = apply(&db, fence(None, 1), &[obs("b", "closed", 3)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT entity_id, properties FROM events ORDER BY entity_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let props: serde_json::Value = rows[0].get(1);
    assert_eq!(
        props["status"],
        serde_json::json!({"new_value": "terminated", "old_value": "active"})
    );
    let state: Option<String> = client
        .query_one("SELECT value FROM entity_state WHERE entity_id = 'b'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state.as_deref(), Some("active"));
    assert_eq!(stored_position(&db).await, 4);
}

/// ESOZ messages through the shipped rule's decoder and detector into the real store, once as
/// one batch and once cut into batches at random places: the same events, whatever the cuts.
/// On the partition a message older than one already read for its entity is stale, whichever
/// came first (also when the newer one was the entity's first status); the first status of an
/// entity is an event with `old_value: null`; a replay from offset 0 stores nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esoz_events_do_not_depend_on_batch_boundaries() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let db = fresh_database().await;
    let rules = shipped_rules();
    let rule = rules
        .get(rules.index_for("event_manager_topic").unwrap())
        .unwrap();

    // Per message: entity, status, event time (few values, so that repeats, equal times and
    // late messages are common); per gap between messages: whether a batch ends there.
    let strategy = (
        prop::collection::vec((0usize..2, 0usize..3, 0i64..5), 1..16),
        prop::collection::vec(any::<bool>(), 16),
    );
    let handle = tokio::runtime::Handle::current();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |(messages, cuts)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            handle.block_on(async {
                let whole = format!("p{n}-whole");
                let split = format!("p{n}-split");
                let mut batches = Vec::new();
                let mut start = 0;
                for (end, _) in cuts
                    .iter()
                    .enumerate()
                    .take(messages.len())
                    .skip(1)
                    .filter(|(_, cut)| **cut)
                {
                    batches.push(start..end);
                    start = end;
                }
                batches.push(start..messages.len());

                let everything = 0..messages.len();
                let all = std::slice::from_ref(&everything);
                apply_esoz(&db, rule, &whole, &messages, all, None).await;
                let inserted = apply_esoz(&db, rule, &split, &messages, &batches, None).await;
                let events = stored_status_changes(&db, &split).await;
                prop_assert_eq!(
                    &events,
                    &stored_status_changes(&db, &whole).await,
                    "batches {:?}",
                    batches
                );
                prop_assert_eq!(inserted, events.len() as u64);

                // The rules, independently of the detector's code.
                let mut newest: HashMap<usize, (i64, usize)> = HashMap::new();
                for (offset, &(entity, status, time)) in messages.iter().enumerate() {
                    let event = events.get(&(offset as i64));
                    match newest.get(&entity) {
                        None => prop_assert_eq!(
                            event,
                            Some(&change(STATUSES[status], None)),
                            "the first status of an entity is an event"
                        ),
                        Some(&(latest, _)) if time < latest => {
                            prop_assert_eq!(event, None, "older than a message read before")
                        }
                        Some(&(_, known)) if known == status => {
                            prop_assert_eq!(event, None, "a repeat")
                        }
                        Some(&(_, known)) => prop_assert_eq!(
                            event,
                            Some(&change(STATUSES[status], Some(STATUSES[known])))
                        ),
                    }
                    if newest
                        .get(&entity)
                        .is_none_or(|&(latest, _)| time >= latest)
                    {
                        newest.insert(entity, (time, status));
                    }
                }

                // A replay from offset 0: every message is read again, nothing is written.
                db.store
                    .set_offsets("g", &[(split.clone(), 0, 0)])
                    .await
                    .unwrap();
                let again = apply_esoz(&db, rule, &split, &messages, all, Some(0)).await;
                prop_assert_eq!(again, 0);
                prop_assert_eq!(&stored_status_changes(&db, &split).await, &events);
                Ok(())
            })
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

const STATUSES: [&str; 3] = ["NEW", "APPROVED", "REJECTED"];

fn shipped_rules() -> event_manager::pipeline::RuleSet {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
    event_manager::pipeline::RuleSet::compile(
        event_manager::config::load_topic_rules(&dir).unwrap(),
    )
    .unwrap()
}

fn change(new: &str, old: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "new_value": new, "old_value": old })
}

/// Applies ESOZ messages `(entity, status, second)` at offsets 0.. of partition 0 of `topic`
/// (entity ids are prefixed with the topic), batch by batch, the first batch expecting the
/// stored offset `first_expected`. Returns how many events were inserted.
async fn apply_esoz(
    db: &crate::support::TestDatabase,
    rule: &event_manager::pipeline::rules::CompiledRule,
    topic: &str,
    messages: &[(usize, usize, i64)],
    batches: &[std::ops::Range<usize>],
    first_expected: Option<i64>,
) -> u64 {
    use event_manager::pipeline::process::{process, Message, Processed};

    let mut expected = first_expected;
    let mut inserted = 0;
    for batch in batches {
        let mut observations = Vec::new();
        for offset in batch.clone() {
            let (entity, status, second) = messages[offset];
            let payload = serde_json::json!({
                "event_type": "StatusChangeEvent",
                "entity_type": "EmployeeRequest",
                "entity_id": format!("{topic}-e{entity}"),
                "properties": {"status": {"new_value": STATUSES[status]}},
                "event_time": format!("2024-05-01T08:00:0{second}Z"),
                "changed_by": null,
            });
            let msg = Message {
                topic: "event_manager_topic".into(),
                partition: 0,
                offset: offset as i64,
                key: None,
                payload: Some(payload.to_string().into_bytes()),
                headers: Vec::new(),
                timestamp_ms: None,
            };
            let Processed::Selected {
                observations: o, ..
            } = process(rule, &msg)
            else {
                panic!("every message is selected");
            };
            observations.push((offset as i64, o));
        }
        let entities: Vec<(String, String)> = observations
            .iter()
            .flat_map(|(_, o)| o)
            .map(|o| (o.entity_type.to_string(), o.entity_id.clone()))
            .collect();
        let fence = OffsetFence {
            topic: topic.to_owned(),
            partition: 0,
            expected,
            next: batch.end as i64,
        };
        inserted += db
            .store
            .apply_batch("g", &[fence], &entities, |states| {
                let mut changes = BatchChanges::default();
                let mut dirty = Vec::new();
                for (offset, obs) in &observations {
                    for o in obs {
                        let source = SourceRef {
                            topic: topic.into(),
                            partition: 0,
                            offset: *offset,
                        };
                        let d = rule.detector.detect(o, &source, states);
                        if let Some(event) = d.event {
                            changes.events.push(NewEvent {
                                event,
                                source,
                                seq: 0,
                            });
                        }
                        dirty.extend(d.dirty);
                    }
                }
                // Each attribute once: its state before its first change, its final state.
                dirty.sort_by(|a, b| a.0.cmp(&b.0));
                dirty.dedup_by(|later, first| later.0 == first.0);
                changes.states = dirty
                    .into_iter()
                    .map(|(key, before)| {
                        let state = states[&key].clone();
                        StateWrite { key, state, before }
                    })
                    .collect();
                changes
            })
            .await
            .unwrap()
            .events_inserted;
        expected = Some(batch.end as i64);
    }
    inserted
}

/// The `status` change of every event stored from `topic`, by source offset.
async fn stored_status_changes(
    db: &crate::support::TestDatabase,
    topic: &str,
) -> HashMap<i64, serde_json::Value> {
    db.client()
        .await
        .query(
            "SELECT source_offset, properties -> 'status' FROM events WHERE source_topic = $1",
            &[&topic],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The counts the store writes for the events it inserts (src/store/counts.rs) are those the
/// SQL count functions give for the stored rows (sql/V4–V6), whichever way rows arrived: batches
/// counted by the store, a re-delivered batch (not inserted, not counted again), a batch with an
/// event before the buckets' origin and a plain INSERT (both counted by the trigger).
#[tokio::test]
async fn counts_written_by_the_store_equal_the_sql_count_keys() {
    use event_manager::detect::DetectedEvent;
    let db = fresh_database().await;
    let long = "é".repeat(256);
    let too_long = "x".repeat(257);
    let properties = [
        serde_json::json!({"status": {"new_value": "active", "old_value": null}}),
        serde_json::json!({"status": {"new_value": "closed", "old_value": "active"},
                           "employee_id": {"new_value": "e1"}}),
        serde_json::json!({"status": {"new_value": long, "old_value": "a"}}),
        serde_json::json!({"status": {"new_value": too_long, "old_value": "a"}}),
        serde_json::json!({"score": {"new_value": 3, "old_value": 2}, "flag": true}),
        serde_json::json!({"patient": {"new_value": null, "old_value": "p1"}}),
    ];
    let event = |i: usize, seconds: i64| DetectedEvent {
        event_type: ["StatusChangeEvent", "StateChangeEvent"][i % 2].into(),
        entity_type: ["Declaration", "Episode", "CarePlan"][i % 3].into(),
        entity_id: format!("e{i}"),
        properties: properties[i % properties.len()].clone(),
        event_time: Utc.timestamp_opt(seconds, 0).unwrap()
            + chrono::Duration::microseconds(i as i64),
        changed_by: None,
    };
    // (first offset, event times): minutes and ten-minute spans with a bucket boundary, a
    // re-delivery of offsets stored already, a batch with an event in 2000.
    let base = 1_700_000_000 - 1_700_000_000 % 600;
    let batches: Vec<(i64, Vec<i64>)> = vec![
        (0, (0..40).map(|i| base + i * 37).collect()),
        (40, (0..25).map(|i| base + 599 + i).collect()),
        (40, (0..10).map(|i| base + 599 + i).collect()),
        (65, vec![base + 5, 946_684_800, base + 7]),
    ];
    let mut stored: Option<i64> = None;
    for (first, times) in batches {
        let events: Vec<NewEvent> = times
            .iter()
            .enumerate()
            .map(|(i, &t)| NewEvent {
                event: event(first as usize + i, t),
                source: SourceRef {
                    topic: "t".into(),
                    partition: 0,
                    offset: first + i as i64,
                },
                seq: 0,
            })
            .collect();
        let end = first + times.len() as i64;
        let redelivered = stored.is_some_and(|s| end <= s);
        let fence = OffsetFence {
            topic: "t".into(),
            partition: 0,
            expected: stored,
            next: if redelivered {
                stored.unwrap_or(0)
            } else {
                end
            },
        };
        let report = db
            .store
            .apply_batch("g", &[fence], &[], |_| BatchChanges {
                events,
                states: Vec::new(),
            })
            .await
            .unwrap();
        if redelivered {
            assert_eq!(report.events_inserted, 0, "a re-delivery inserts nothing");
        } else {
            assert_eq!(report.events_inserted, times.len() as u64);
            stored = Some(end);
        }
    }
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                                 source_topic, source_partition, source_offset, source_seq) \
             VALUES (gen_random_uuid(), 'StatusChangeEvent', 'Declaration', 'x', \
                     '{\"status\": {\"new_value\": \"active\", \"old_value\": null}}', \
                     to_timestamp(1700000000), 'other', 0, 0, 0)",
        )
        .await
        .unwrap();
    for table in [
        "event_counts",
        "event_value_counts",
        "event_value_counts_10min",
    ] {
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert!(rows > 0, "{table} is empty");
    }
    let differ = counts_unlike_a_recount(&client).await;
    assert!(
        differ.is_empty(),
        "the count tables differ from the count keys of the stored events: {differ:#?}"
    );
    let events: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 40 + 25 + 3 + 1);
}

/// The batch's state read is prepared once per connection, often while `entity_state` is still
/// small. Its generic plan must look each entity up by the primary key, never scan the table:
/// a scan costs every later batch time in proportion to all the state ever stored.
#[tokio::test]
async fn the_state_read_looks_entities_up_whatever_the_table_held_when_it_was_planned() {
    looks_state_up_however_planned(
        &format!(
            "PREPARE state_read(text[], text[]) AS {}",
            event_manager::store::STATE_READ
        ),
        "EXPLAIN EXECUTE state_read(ARRAY['Declaration','Declaration'], ARRAY['a','b'])",
        "the state read",
    )
    .await;
}

/// Prepares a statement (`prepare`) with generic plans and asserts that `explain` shows it
/// looking `entity_state` up by key, planned while the table is empty and again once it is
/// grown and analysed: a statement is prepared once per connection, and a plan made while the
/// table was small must not scan it once it is large.
async fn looks_state_up_however_planned(prepare: &str, explain: &str, what: &str) {
    let db = fresh_database().await;
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; {prepare}"
        ))
        .await
        .unwrap();
    let plan = || async {
        client
            .simple_query(explain)
            .await
            .unwrap()
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let empty = plan().await;
    // Grown and analysed afterwards: the plan is made again, and must still be a lookup.
    client
        .batch_execute(
            "INSERT INTO entity_state (entity_type, entity_id, attribute, value, version, \
                                       event_time, deleted) \
             SELECT 'Declaration', 'e' || g, 'status', 'active', 1, now(), false \
             FROM generate_series(1, 20000) AS g; \
             ANALYZE entity_state",
        )
        .await
        .unwrap();
    let grown = plan().await;
    for plan in [empty, grown] {
        assert!(
            plan.contains("Index Scan using entity_state_pkey") && !plan.contains("Seq Scan"),
            "{what} scans instead of looking up:\n{plan}"
        );
    }
}

/// Two batches of a partition in flight (docs/architecture.md, "Exactly once"): the second,
/// started once the first has run detection but without its handover, detects against the
/// state before the first, and its write of an entity they share waits for the first's row
/// until the first has committed, then finds it moved: it rolls back, and stored again (as the
/// consumer does) it reads the state the first wrote and checks its fence after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_behind_the_one_before_it_without_its_handover_rolls_back_as_moved() {
    two_batches_in_flight(false).await;
}

/// With the handover of the batch before it, a batch locks only the entities that one does not
/// hold: it writes its events while that one is still uncommitted, takes the shared entity's
/// state from the handover, and checks it once the first has committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_behind_takes_the_state_the_one_before_hands_over() {
    two_batches_in_flight(true).await;
}

/// A batch of two partitions behind a batch stored in two transactions, one per partition
/// (docs/architecture.md, "Two batches in flight"): it takes the state of each one's entities
/// from that one's handover, writes its events and the state of its own entities while both
/// are uncommitted, waits for its turns, and once both committed checks the handed-over state
/// and writes it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_behind_two_transactions_takes_both_handovers() {
    let db = fresh_database().await;
    let on = |partition, expected, next| OffsetFence {
        topic: "t".into(),
        partition,
        expected,
        next,
    };
    for (p, id) in [(0, "a"), (1, "b")] {
        let o = [obs(id, "active", 0)];
        db.store
            .apply_batch("g", &[on(p, None, 1)], &entities_of(&o), |states| {
                detect_on(p, &o, 0, states)
            })
            .await
            .unwrap();
    }
    let store = &db.store;
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    // The batch before: `a` terminated on partition 0, `b` on partition 1, one transaction each,
    // uncommitted until released.
    let before = |p: i32, id: &'static str| {
        let mut go = go_rx.clone();
        let (handover_tx, handover_rx) = tokio::sync::oneshot::channel();
        let stored = async move {
            let o = [obs(id, "terminated", 1)];
            store
                .apply_batch_in_turn(
                    "g",
                    &[on(p, Some(1), 2)],
                    &entities_of(&o),
                    |states| detect_on(p, &o, 1, states),
                    Turn {
                        detected: move |handover| {
                            let _ = handover_tx.send(handover);
                        },
                        after: Some(move || async move { go.wait_for(|go| *go).await.is_ok() }),
                        handover: Vec::new(),
                    },
                    None,
                )
                .await
        };
        (stored, handover_rx)
    };
    let (first_a, handover_a) = before(0, "a");
    let (first_b, handover_b) = before(1, "b");
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel::<bool>();
    let earlier = async {
        let (a, b) = tokio::join!(first_a, first_b);
        let _ = committed_tx.send(a.is_ok() && b.is_ok());
        (a, b)
    };
    let later = async {
        let handovers = vec![handover_a.await.unwrap(), handover_b.await.unwrap()];
        let (a, b) = ([obs("a", "closed", 2)], [obs("b", "closed", 2)]);
        let entities = [entities_of(&a), entities_of(&b)].concat();
        store
            .apply_batch_in_turn(
                "g",
                &[on(0, Some(2), 3), on(1, Some(2), 3)],
                &entities,
                |states| {
                    let mut changes = detect_on(0, &a, 2, states);
                    let more = detect_on(1, &b, 2, states);
                    changes.events.extend(more.events);
                    changes.states.extend(more.states);
                    changes
                },
                Turn {
                    detected: |_| {},
                    after: Some(move || async move { committed_rx.await.unwrap_or(false) }),
                    handover: handovers,
                },
                None,
            )
            .await
    };
    let release = async {
        // Both handed over: the later batch wrote its events and waits for its turn.
        one_waits_for(&db, "advisory").await;
        assert_eq!(
            crate::pipeline::count(&db, "SELECT count(*) FROM events").await,
            0,
            "nothing committed yet"
        );
        go_tx.send(true).unwrap();
    };
    let ((a, b), later, ()) = tokio::join!(earlier, later, release);
    assert_eq!(a.unwrap().events_inserted, 1);
    assert_eq!(b.unwrap().events_inserted, 1);
    assert_eq!(later.unwrap().events_inserted, 2);
    let changes: Vec<(String, serde_json::Value)> = pairs(
        &db,
        "SELECT entity_id, properties -> 'status' FROM events ORDER BY entity_id, source_offset",
    )
    .await;
    let change = |id: &str, old: &str, new: &str| {
        (
            id.to_owned(),
            serde_json::json!({"new_value": new, "old_value": old}),
        )
    };
    assert_eq!(
        changes,
        [
            change("a", "active", "terminated"),
            change("a", "terminated", "closed"),
            change("b", "active", "terminated"),
            change("b", "terminated", "closed"),
        ]
    );
    let client = db.client().await;
    assert_eq!(counts_unlike_a_recount(&client).await, Vec::<String>::new());
}

/// `a` active, then a batch changing it that is itself behind a batch that "commits" when
/// released, and behind it a batch changing `a` again and making `b`: the second waits in
/// PostgreSQL, for `a`'s row without the first's handover (then rolls back as moved and is
/// stored again), for its turn (an advisory lock) with it, and the first is released only then.
/// Both are stored in order.
async fn two_batches_in_flight(with_handover: bool) {
    let db = fresh_database().await;
    apply(&db, fence(None, 1), &[obs("a", "active", 0)])
        .await
        .unwrap();
    let first = [obs("a", "terminated", 1)];
    let second = [obs("a", "closed", 2), obs("b", "active", 2)];
    let (handover_tx, handover_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (waiting_tx, waiting_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<bool>();
    let store = &db.store;
    let earlier = async {
        let result = store
            .apply_batch_in_turn(
                "g",
                &[fence(Some(1), 2)],
                &entities_of(&first),
                |states| detect_all(&first, 1, states),
                Turn {
                    detected: move |handover| {
                        let _ = handover_tx.send(handover);
                    },
                    // Called once its events and state are written: the later one starts
                    // only then, so that its write of `a` (without the handover) waits for
                    // this one's instead of taking the row first.
                    after: Some(move || async move {
                        let _ = waiting_tx.send(());
                        go_rx.await.is_ok()
                    }),
                    handover: Vec::new(),
                },
                None,
            )
            .await;
        let _ = done_tx.send(result.is_ok());
        result
    };
    let later = async {
        let handover = handover_rx.await.unwrap();
        waiting_rx.await.unwrap();
        store
            .apply_batch_in_turn(
                "g",
                &[fence(Some(2), 4)],
                &entities_of(&second),
                |states| detect_all(&second, 2, states),
                Turn {
                    detected: |_| {},
                    after: Some(move || async move { done_rx.await.unwrap_or(false) }),
                    handover: if with_handover {
                        vec![handover]
                    } else {
                        Vec::new()
                    },
                },
                None,
            )
            .await
    };
    let release = async {
        // The later batch is in flight, waiting: for the row of `a` the first one wrote, or
        // with the handover, having written its events, for its turn.
        let waiting_for = match with_handover {
            true => "advisory",
            false => "transactionid",
        };
        one_waits_for(&db, waiting_for).await;
        go_tx.send(()).unwrap();
    };
    let (earlier, later, ()) = tokio::join!(earlier, later, release);
    assert_eq!(earlier.unwrap().events_inserted, 1);
    let later = match (with_handover, later) {
        (true, later) => later.unwrap(),
        (false, Err(StoreError::StateMoved)) => store
            .apply_batch("g", &[fence(Some(2), 4)], &entities_of(&second), |states| {
                detect_all(&second, 2, states)
            })
            .await
            .unwrap(),
        (false, other) => panic!("expected the state to have moved, got {other:?}"),
    };
    assert_eq!(later.events_inserted, 1);
    assert_eq!(
        status_changes(&db).await,
        [
            (
                1,
                serde_json::json!({"new_value": "terminated", "old_value": "active"})
            ),
            (
                2,
                serde_json::json!({"new_value": "closed", "old_value": "terminated"})
            ),
        ]
    );
    assert_eq!(stored_position(&db).await, 4);
    let client = db.client().await;
    assert_eq!(counts_unlike_a_recount(&client).await, Vec::<String>::new());
    let states: Vec<(String, String)> = pairs(
        &db,
        "SELECT entity_id, value FROM entity_state ORDER BY entity_id",
    )
    .await;
    assert_eq!(
        states,
        [
            ("a".to_owned(), "closed".to_owned()),
            ("b".to_owned(), "active".to_owned())
        ]
    );
}

/// A batch behind one that did not commit rolls back: nothing of it is stored and the
/// partition's position stays where it was.
#[tokio::test]
async fn a_batch_behind_one_that_did_not_commit_stores_nothing() {
    let db = fresh_database().await;
    apply(&db, fence(None, 1), &[obs("a", "active", 0)])
        .await
        .unwrap();
    let batch = [obs("a", "terminated", 1), obs("b", "active", 1)];
    let err = apply_behind(&db, fence(Some(1), 3), &batch, false, Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PredecessorFailed), "{err}");
    let client = db.client().await;
    let stored: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM entity_state)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "only the first batch's baseline of a");
    assert_eq!(stored_position(&db).await, 1);
}

/// The events of "t" in offset order, with their status change.
async fn status_changes(db: &crate::support::TestDatabase) -> Vec<(i64, serde_json::Value)> {
    pairs(
        db,
        "SELECT source_offset, properties -> 'status' FROM events ORDER BY source_offset",
    )
    .await
}

/// Waits until one session of the test database waits for a lock of this kind
/// (`pg_stat_activity.wait_event`: `advisory`, `transactionid`).
async fn one_waits_for(db: &crate::support::TestDatabase, lock: &str) {
    let client = db.client().await;
    crate::support::wait_for(std::time::Duration::from_secs(30), || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND wait_event = $1",
                &[&lock],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
}

/// The rows of a query of two columns.
async fn pairs<A, B>(db: &crate::support::TestDatabase, sql: &str) -> Vec<(A, B)>
where
    A: for<'r> tokio_postgres::types::FromSql<'r>,
    B: for<'r> tokio_postgres::types::FromSql<'r>,
{
    db.client()
        .await
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// When another writer changed a handed-over entity between the two batches, the batch behind
/// rolls back and, stored again alone, is judged against the state as it is.
#[tokio::test]
async fn a_stale_handover_rolls_the_batch_back() {
    let db = fresh_database().await;
    apply(&db, fence(None, 1), &[obs("a", "active", 0)])
        .await
        .unwrap();
    let first = [obs("a", "terminated", 1)];
    let (handover_tx, handover_rx) = tokio::sync::oneshot::channel();
    db.store
        .apply_batch_in_turn(
            "g",
            &[fence(Some(1), 2)],
            &entities_of(&first),
            |states| detect_all(&first, 1, states),
            Turn {
                detected: move |handover| {
                    let _ = handover_tx.send(handover);
                },
                after: None::<fn() -> std::future::Ready<bool>>,
                handover: Vec::new(),
            },
            None,
        )
        .await
        .unwrap();
    let handover = handover_rx.await.unwrap();
    // Another partition's consumer moves `a` on.
    apply_elsewhere(&db, None, &[obs("a", "entered_in_error", 5)]).await;

    let second = [obs("a", "closed", 6), obs("b", "active", 6)];
    let err = apply_behind(&db, fence(Some(2), 4), &second, true, vec![handover])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::HandoverStale), "{err}");
    assert_eq!(stored_position(&db).await, 2, "nothing of it was stored");
    assert_eq!(status_changes(&db).await.len(), 2);

    assert_eq!(apply(&db, fence(Some(2), 4), &second).await.unwrap(), 1);
    let changes = status_changes(&db).await;
    assert_eq!(
        changes.last().unwrap(),
        &(
            2,
            serde_json::json!({"new_value": "closed", "old_value": "entered_in_error"})
        )
    );
}

/// [`apply`] on partition 0 of "t", detecting against what `cache` remembers.
async fn apply_cached(
    db: &crate::support::TestDatabase,
    cache: &StateCache,
    fence: OffsetFence,
    observations: &[Observation],
) -> Result<BatchReport, StoreError> {
    let entities = entities_of(observations);
    let partitions = vec![Some(("t".to_owned(), 0)); entities.len()];
    let first = fence.expected.unwrap_or(0);
    db.store
        .apply_batch_in_turn(
            "g",
            &[fence],
            &entities,
            |states| detect_all(observations, first, states),
            Alone::alone(),
            Some(CacheUse {
                cache,
                partitions: &partitions,
            }),
        )
        .await
}

/// A write on partition 1 of "t" by another consumer (without a state cache).
async fn apply_elsewhere(
    db: &crate::support::TestDatabase,
    expected: Option<i64>,
    observations: &[Observation],
) {
    let first = expected.unwrap_or(0);
    db.store
        .apply_batch(
            "g",
            &[OffsetFence {
                topic: "t".into(),
                partition: 1,
                expected,
                next: first + observations.len() as i64,
            }],
            &entities_of(observations),
            |states| detect_on(1, observations, first, states),
        )
        .await
        .unwrap();
}

/// The state cache (docs/architecture.md, "The state cache"): a remembered entity is neither
/// locked nor read, and a write against a remembered state another writer has changed since
/// rolls the batch back, which stored again reads the state as it is.
#[tokio::test]
async fn a_remembered_state_is_not_read_and_a_moved_one_rolls_the_batch_back() {
    let db = fresh_database().await;
    let cache = StateCache::new(100);
    let report = apply_cached(&db, &cache, fence(None, 1), &[obs("a", "active", 0)])
        .await
        .unwrap();
    assert_eq!((report.entities_read, report.entities_recalled), (1, 0));
    assert_eq!(cache.len(), 1);
    let report = apply_cached(&db, &cache, fence(Some(1), 2), &[obs("a", "closed", 1)])
        .await
        .unwrap();
    assert_eq!((report.entities_read, report.entities_recalled), (0, 1));
    assert_eq!(report.events_inserted, 1);

    // Another replica moves `a` on (a new value), then a new attribute's row appears.
    apply_elsewhere(&db, None, &[obs("a", "entered_in_error", 2)]).await;
    let third = [obs("a", "active", 3)];
    let err = apply_cached(&db, &cache, fence(Some(2), 3), &third)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StateMoved), "{err}");
    assert_eq!(stored_position(&db).await, 2, "nothing of it was stored");
    assert_eq!(cache.len(), 0, "its entities are forgotten");
    let report = apply_cached(&db, &cache, fence(Some(2), 3), &third)
        .await
        .unwrap();
    assert_eq!((report.entities_read, report.entities_recalled), (1, 0));
    assert_eq!(
        status_changes(&db).await.last().unwrap(),
        &(
            2,
            serde_json::json!({"new_value": "active", "old_value": "entered_in_error"})
        )
    );

    // A message that changes nothing against the remembered state writes nothing, whatever
    // another writer did meanwhile: it is applied before that writer's message.
    apply_elsewhere(&db, Some(1), &[obs("a", "closed", 4)]).await;
    let report = apply_cached(&db, &cache, fence(Some(3), 4), &[obs("a", "active", 3)])
        .await
        .unwrap();
    assert_eq!((report.entities_recalled, report.states_written), (1, 0));
    // A new attribute's row another writer inserted first is not overwritten either.
    let priority = |value: &str| {
        let mut o = obs("a", "", 5);
        o.attributes = Attributes::from([("priority".to_owned(), Some(value.to_owned()))]);
        o
    };
    apply_elsewhere(&db, Some(2), &[priority("low")]).await;
    let err = apply_cached(&db, &cache, fence(Some(4), 5), &[priority("high")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StateMoved), "{err}");
}

/// State the terminator pruned is forgotten: the prune count moved (sql/V17), so the next batch
/// reads the table and sees a first status again, as it would without the cache.
#[tokio::test]
async fn a_prune_makes_the_cache_forget() {
    let db = fresh_database().await;
    let cache = StateCache::new(100);
    apply_cached(&db, &cache, fence(None, 1), &[obs("a", "active", 0)])
        .await
        .unwrap();
    assert_eq!(cache.len(), 1);
    let client = db.client().await;
    let state_rows = || async {
        client
            .query_one("SELECT count(*) FROM entity_state", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // What the terminator's state pruning does (tests/it/terminator.rs runs the real one).
    client
        .batch_execute("DELETE FROM entity_state; SELECT nextval('entity_state_prunes')")
        .await
        .unwrap();
    assert_eq!(state_rows().await, 0);
    let report = apply_cached(&db, &cache, fence(Some(1), 2), &[obs("a", "active", 0)])
        .await
        .unwrap();
    assert_eq!((report.entities_read, report.entities_recalled), (1, 0));
    assert_eq!(state_rows().await, 1, "a first status again: its baseline");
}

/// The state cache's compare-and-set update (docs/architecture.md, "The state cache") looks
/// each row up by its key, whatever the table held when it was planned, as the state read does.
#[tokio::test]
async fn the_state_update_looks_rows_up_whatever_the_table_held_when_it_was_planned() {
    // Planned (at its first execution, and again after the ANALYZE) in a batch transaction.
    looks_state_up_however_planned(
        &format!(
            "PREPARE state_update(text[], text[], text[], text[], bigint[], timestamptz[], \
                 bool[], text[], int[], bigint[], text[], text[], bigint[], timestamptz[], bool[], \
                 text[], int[], bigint[], text[], float8) AS {}",
            event_manager::store::STATE_UPDATE
        ),
        &format!(
            "BEGIN; {}; \
             EXPLAIN EXECUTE state_update('{{Declaration}}', '{{a}}', '{{status}}', '{{active}}', \
               '{{1}}', '{{2026-01-01}}', '{{f}}', '{{t}}', '{{0}}', '{{1}}', '{{NULL}}', \
               '{{draft}}', '{{1}}', '{{2025-01-01}}', '{{f}}', '{{t}}', '{{0}}', '{{0}}', \
               '{{NULL}}', 3600); \
             ROLLBACK",
            event_manager::store::STATE_UPDATE_PLAN
        ),
        "the state update",
    )
    .await;
}
