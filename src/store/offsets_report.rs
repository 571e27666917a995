//! What operators ask the EventDB about a consumer group (`status`, the console): the stored
//! positions of a group, the groups that have any, and the newest event stored per partition.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{EventStore, StoreError};

/// One stored position of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the group reads.
    pub next_offset: i64,
    /// When the position last moved.
    pub updated_at: DateTime<Utc>,
}

/// The event stored last from one partition (the highest source offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastEvent {
    /// Its `event_time`.
    pub event_time: DateTime<Utc>,
    /// When it was inserted.
    pub inserted_at: DateTime<Utc>,
}

impl EventStore {
    /// Every stored position of `group_id`, by topic and partition.
    pub(crate) async fn group_offsets(
        &self,
        group_id: &str,
    ) -> Result<Vec<StoredOffset>, StoreError> {
        let client = self.api_client().await?;
        let rows = client
            .query(
                "SELECT topic, partition, next_offset, updated_at FROM consumer_offsets \
                 WHERE group_id = $1 ORDER BY topic, partition",
                &[&group_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredOffset {
                topic: r.get(0),
                partition: r.get(1),
                next_offset: r.get(2),
                updated_at: r.get(3),
            })
            .collect())
    }

    /// The consumer groups with stored positions, by name.
    pub(crate) async fn offset_groups(&self) -> Result<Vec<String>, StoreError> {
        let client = self.api_client().await?;
        let rows = client
            .query(
                "SELECT DISTINCT group_id FROM consumer_offsets ORDER BY group_id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// For each partition, the event stored from its highest source offset (one index probe
    /// per partition on `events_source_unique`); partitions without events are absent.
    pub(crate) async fn last_events(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), LastEvent>, StoreError> {
        let client = self.api_client().await?;
        let topics: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
        let parts: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let rows = client
            .query(
                "SELECT q.topic, q.partition, e.event_time, e.inserted_at \
                 FROM UNNEST($1::text[], $2::int[]) AS q(topic, partition) \
                 CROSS JOIN LATERAL ( \
                   SELECT event_time, inserted_at FROM events \
                   WHERE source_topic = q.topic AND source_partition = q.partition \
                   ORDER BY source_offset DESC, source_seq DESC LIMIT 1) AS e",
                &[&topics, &parts],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    (r.get::<_, String>(0), r.get::<_, i32>(1)),
                    LastEvent {
                        event_time: r.get(2),
                        inserted_at: r.get(3),
                    },
                )
            })
            .collect())
    }
}
