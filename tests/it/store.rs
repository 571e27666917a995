//! The batch transaction against real PostgreSQL: fences, state and events.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use event_manager::detect::{ChangeDetector, DetectOptions};
use event_manager::model::{Attributes, Observation, ObservationKind, SourceRef};
use event_manager::store::{BatchChanges, NewEvent, OffsetFence, StoreError};

use crate::support::fresh_database;

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
    }
}

async fn apply(
    db: &crate::support::TestDatabase,
    fence: OffsetFence,
    observations: &[Observation],
) -> Result<u64, StoreError> {
    let entities: Vec<(String, String)> = observations
        .iter()
        .map(|o| (o.entity_type.to_string(), o.entity_id.clone()))
        .collect();
    let detector = ChangeDetector::new(DetectOptions::default());
    let topic = fence.topic.clone();
    let first = fence.expected.unwrap_or(0);
    let report = db
        .store
        .apply_batch("g", &[fence], &entities, |states| {
            let mut changes = BatchChanges::default();
            for (i, o) in observations.iter().enumerate() {
                let d = detector.detect(o, states);
                if let Some(event) = d.event {
                    changes.events.push(NewEvent {
                        event,
                        source: SourceRef {
                            topic: topic.clone(),
                            partition: 0,
                            offset: first + i as i64,
                        },
                        seq: 0,
                    });
                }
                for k in d.dirty {
                    let s = states[&k].clone();
                    changes.states.retain(|(x, _)| x != &k);
                    changes.states.push((k, s));
                }
            }
            changes
        })
        .await?;
    Ok(report.events_inserted)
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
    let offsets = db
        .store
        .load_offsets("g", &[("t".into(), 0)])
        .await
        .unwrap();
    assert_eq!(offsets[&("t".to_owned(), 0)], 4);
}
