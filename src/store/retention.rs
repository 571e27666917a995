//! The terminator's statements: cutoffs from the database clock, batched keyset deletes of
//! events and stale state, and the session advisory lock that lets one replica at a time run
//! (docs/architecture.md, "Decisions"). The rules and the loop live in `terminator/`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::counts::{Buckets, CountedAttributes, Counts, COUNTS_WRITTEN};
use super::{EventStore, StoreError};

/// The first UUID v7 of the millisecond `at` falls in: ids made before that millisecond sort
/// before it, ids made in it or later do not. Event ids are UUID v7 made as their rows are
/// written (`Uuid::now_v7`, src/store/mod.rs), so id order is insertion order to the
/// millisecond, and the terminator's rules walk the primary key (sql/V15).
pub(crate) fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let ms = u128::try_from(at.timestamp_millis()).unwrap_or(0);
    Uuid::from_u128((ms & 0xFFFF_FFFF_FFFF) << 80)
}

/// The instants before which rows are expired, from the database clock; `None` where the rule
/// is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cutoffs {
    /// Events inserted before this are expired by age.
    pub(crate) age: Option<DateTime<Utc>>,
    /// State rows of entities not written since this are stale.
    pub(crate) state: Option<DateTime<Utc>>,
}

/// What a run at this moment would delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetentionPreview {
    /// The cutoffs of the rules.
    pub(crate) cutoffs: Cutoffs,
    /// Events whose ids were made before the age cutoff.
    pub(crate) expired_events: u64,
    /// All events.
    pub(crate) total_events: u64,
    /// Stale state rows (0 without a state cutoff).
    pub(crate) stale_states: u64,
}

/// What one delete statement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeletedBatch {
    /// Rows deleted.
    pub(crate) deleted: u64,
    /// Whether this was the last batch: it found fewer rows than the batch size.
    pub(crate) last: bool,
}

/// Rows of entities none of whose attributes was written since `$1`.
const STALE: &str = "s.updated_at < $1 AND NOT EXISTS ( \
    SELECT 1 FROM entity_state o \
    WHERE o.entity_type = s.entity_type AND o.entity_id = s.entity_id AND o.updated_at >= $1)";

/// One batch of the terminator's deletes, `{after}` the keyset condition of every batch but the
/// first. Keyset cursor: each batch starts after the last row of the previous one instead of
/// re-walking index entries of rows already deleted but not yet vacuumed. The rows are found on
/// the primary key, ids below `$1` in order, and deleted by ctid (a TID scan, whatever the
/// planner thinks of the batch size); ctids are stable here because events are never updated
/// and a row visible to this statement cannot be vacuumed under it.
///
/// One row per row deleted (`gone`; a row another session deleted first is not among them),
/// each with the batch's size and last position, and the deleted row's count keys' parts: its
/// types, its minute and ten minutes by the `date_bin` of sql/V4 (any time, the origin's side
/// included) and its properties. When the batch deleted nothing, one row of the batch alone;
/// none for an empty batch. The keys are added up by the terminator (`Counts`, as ingestion
/// adds up its own) and subtracted in the same transaction, whose
/// `event_manager.counts_written` keeps sql/V11's delete trigger from firing.
const DELETE_EVENTS: &str = "\
    WITH batch AS MATERIALIZED ( \
        SELECT ctid AS tid, id FROM events \
        WHERE id < $1 {after} \
        ORDER BY id LIMIT $2 \
    ), gone AS ( \
        DELETE FROM events WHERE ctid = ANY(ARRAY(SELECT tid FROM batch)) \
        RETURNING event_type, entity_type, \
                  date_bin('1 minute', event_time, TIMESTAMPTZ '2001-01-01 00:00:00+00') AS minute, \
                  properties \
    ) \
    SELECT s.selected, s.id, g.event_type, g.entity_type, g.minute, \
           date_bin('10 minutes', g.minute, TIMESTAMPTZ '2001-01-01 00:00:00+00'), g.properties \
    FROM (SELECT (SELECT count(*) FROM batch) AS selected, last.id \
            FROM (SELECT id FROM batch ORDER BY id DESC LIMIT 1) last) s \
    LEFT JOIN gone g ON true";

impl EventStore {
    /// A connection of its own holding the session advisory lock `key`, or `None` when another
    /// session holds it. The connection is taken out of the pool and closed when the session
    /// is dropped, so the lock ends with it however the run ends and never leaks into the pool.
    pub(crate) async fn lock_retention(
        &self,
        key: i64,
    ) -> Result<Option<RetentionSession>, StoreError> {
        let client = deadpool_postgres::Object::take(self.client().await?);
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        Ok(locked.then_some(RetentionSession { client, key }))
    }

    /// Counts what a run with these rules would delete now, with the same cutoffs.
    pub(crate) async fn retention_preview(
        &self,
        event_max_time: Option<Duration>,
        state_horizon: Option<Duration>,
    ) -> Result<RetentionPreview, StoreError> {
        let client = self.client().await?;
        let cutoffs = cutoffs(&client, event_max_time, state_horizon).await?;
        let row = match cutoffs.age {
            Some(cutoff) => {
                client
                    .query_one(
                        "SELECT count(*) FILTER (WHERE id < $1), count(*) FROM events",
                        &[&first_id_at(cutoff)],
                    )
                    .await?
            }
            None => {
                client
                    .query_one("SELECT 0::bigint, count(*) FROM events", &[])
                    .await?
            }
        };
        let stale_states = match cutoffs.state {
            Some(cutoff) => client
                .query_one(
                    &format!("SELECT count(*) FROM entity_state s WHERE {STALE}"),
                    &[&cutoff],
                )
                .await?
                .get::<_, i64>(0),
            None => 0,
        };
        Ok(RetentionPreview {
            cutoffs,
            expired_events: row.get::<_, i64>(0) as u64,
            total_events: row.get::<_, i64>(1) as u64,
            stale_states: stale_states as u64,
        })
    }
}

/// The terminator's session, holding its advisory lock (see [`EventStore::lock_retention`]).
pub(crate) struct RetentionSession {
    client: ClientWrapper,
    key: i64,
}

impl std::fmt::Debug for RetentionSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetentionSession")
            .field("key", &self.key)
            .finish()
    }
}

impl RetentionSession {
    /// The cutoffs of rules `event_max_time` and `state_horizon` from now.
    pub(crate) async fn cutoffs(
        &self,
        event_max_time: Option<Duration>,
        state_horizon: Option<Duration>,
    ) -> Result<Cutoffs, StoreError> {
        cutoffs(&self.client, event_max_time, state_horizon).await
    }

    /// The id of the `n`-th newest event (`n` ≥ 1), `None` with fewer events.
    pub(crate) async fn nth_newest_event(&self, n: u64) -> Result<Option<Uuid>, StoreError> {
        let row = self
            .client
            .query_opt(
                "SELECT id FROM events ORDER BY id DESC OFFSET $1 LIMIT 1",
                &[&(n as i64 - 1)],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Deletes the events whose ids sort before `bound` (insertion order, see [`first_id_at`]),
    /// `batch` rows per statement, with their counts.
    pub(crate) async fn events_before(
        &mut self,
        bound: Uuid,
        batch: i64,
    ) -> Result<EventDeletes<'_>, StoreError> {
        let first = self
            .client
            .prepare(&DELETE_EVENTS.replace("{after}", ""))
            .await?;
        let next = self
            .client
            .prepare(&DELETE_EVENTS.replace("{after}", "AND id > $3"))
            .await?;
        let counts_written = self.client.prepare(COUNTS_WRITTEN).await?;
        Ok(EventDeletes {
            client: &mut self.client,
            counts_written,
            first,
            next,
            bound,
            batch,
            after: None,
        })
    }

    /// Deletes the state rows of entities with no row written since `cutoff`, `batch` rows
    /// per statement.
    pub(crate) async fn stale_states(
        &self,
        cutoff: DateTime<Utc>,
        batch: i64,
    ) -> Result<StateDeletes<'_>, StoreError> {
        // The outer `updated_at < $1` is re-checked against a row that ingestion updates while
        // this statement waits for it, so freshly written state is never pruned. A statement
        // that pruned rows advances the prune count before it commits: the consumers' state
        // caches forget what they remember (sql/V17).
        let statement = self
            .client
            .prepare(&format!(
                "WITH batch AS MATERIALIZED ( \
                    SELECT entity_type, entity_id, attribute FROM entity_state s \
                    WHERE {STALE} LIMIT $2), \
                 gone AS (DELETE FROM entity_state s USING batch b \
                    WHERE s.entity_type = b.entity_type AND s.entity_id = b.entity_id \
                      AND s.attribute = b.attribute AND s.updated_at < $1 RETURNING 1) \
                 SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone), \
                        CASE WHEN EXISTS (SELECT FROM gone) \
                             THEN nextval('entity_state_prunes') END"
            ))
            .await?;
        Ok(StateDeletes {
            client: &self.client,
            statement,
            cutoff,
            batch,
        })
    }

    /// Releases the lock; closing the connection (dropping the session) releases it too.
    pub(crate) async fn unlock(self) -> Result<(), StoreError> {
        self.client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key])
            .await?;
        Ok(())
    }
}

/// Batched deletes of expired events ([`RetentionSession::events_before`]).
pub(crate) struct EventDeletes<'a> {
    client: &'a mut ClientWrapper,
    counts_written: Statement,
    first: Statement,
    next: Statement,
    bound: Uuid,
    batch: i64,
    after: Option<Uuid>,
}

impl EventDeletes<'_> {
    /// Deletes the next batch and subtracts its counts, in one short transaction of its own.
    pub(crate) async fn next_batch(&mut self) -> Result<DeletedBatch, StoreError> {
        let (bound, batch) = (&self.bound, &self.batch);
        let tx = self.client.transaction().await?;
        tx.execute(&self.counts_written, &[]).await?;
        let rows = match &self.after {
            None => tx.query(&self.first, &[bound, batch]).await?,
            Some(after) => tx.query(&self.next, &[bound, batch, after]).await?,
        };
        let Some(first) = rows.first() else {
            tx.commit().await?;
            return Ok(DeletedBatch {
                deleted: 0,
                last: true,
            });
        };
        let selected: i64 = first.get(0);
        let after = first.get(1);
        let properties = rows
            .iter()
            .map(|row| row.try_get::<_, Option<Json<CountedAttributes<'_>>>>(6))
            .collect::<Result<Vec<_>, _>>()?;
        let mut counts = Counts::default();
        let mut deleted = 0;
        for (row, properties) in rows.iter().zip(&properties) {
            // `None`: the batch's row when the batch deleted nothing.
            let Some(Json(properties)) = properties else {
                continue;
            };
            let bucket = |i| row.get::<_, DateTime<Utc>>(i).timestamp_micros();
            let buckets = Buckets {
                minute: bucket(4),
                ten: bucket(5),
            };
            counts.add_binned(buckets, row.get(2), row.get(3), properties.iter());
            deleted += 1;
        }
        if deleted > 0 {
            counts.subtract(&tx).await?;
        }
        tx.commit().await?;
        self.after = Some(after);
        Ok(DeletedBatch {
            deleted,
            last: selected < self.batch,
        })
    }
}

/// Batched deletes of stale state ([`RetentionSession::stale_states`]).
pub(crate) struct StateDeletes<'a> {
    client: &'a Client,
    statement: Statement,
    cutoff: DateTime<Utc>,
    batch: i64,
}

impl StateDeletes<'_> {
    /// Deletes the next batch, in its own short transaction.
    pub(crate) async fn next_batch(&mut self) -> Result<DeletedBatch, StoreError> {
        let row = self
            .client
            .query_one(&self.statement, &[&self.cutoff, &self.batch])
            .await?;
        Ok(batch_result(&row, self.batch))
    }
}

/// A batch statement's `(selected, deleted)` columns.
fn batch_result(row: &tokio_postgres::Row, batch: i64) -> DeletedBatch {
    DeletedBatch {
        deleted: row.get::<_, i64>(1) as u64,
        last: row.get::<_, i64>(0) < batch,
    }
}

async fn cutoffs(
    client: &Client,
    event_max_time: Option<Duration>,
    state_horizon: Option<Duration>,
) -> Result<Cutoffs, StoreError> {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    // `updated_at` lags a write by up to `STATE_TOUCH_INTERVAL`.
    let state = state_horizon.map(|h| h + super::STATE_TOUCH_INTERVAL);
    let row = client
        .query_one(
            "SELECT now() - make_interval(secs => $1::float8), \
                    now() - make_interval(secs => $2::float8)",
            &[&secs(event_max_time), &secs(state)],
        )
        .await?;
    Ok(Cutoffs {
        age: row.get(0),
        state: row.get(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::{NoContext, Timestamp};

    fn made_at(ms: u64, nanos_in_ms: u32) -> Uuid {
        Uuid::new_v7(Timestamp::from_unix(
            NoContext,
            ms / 1000,
            (ms % 1000) as u32 * 1_000_000 + nanos_in_ms,
        ))
    }

    #[test]
    fn ids_made_before_a_millisecond_sort_before_its_first_id() {
        let ms = 1_764_000_000_123u64;
        let at = DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap()
            + chrono::Duration::microseconds(456);
        let bound = first_id_at(at);
        assert_eq!(bound.get_version_num(), 0, "a bound, not an id");
        for i in 0..1000 {
            assert!(made_at(ms - 1, 999_999) < bound);
            assert!(made_at(ms - 1 - i, 0) < bound);
            assert!(made_at(ms, 0) >= bound);
            assert!(made_at(ms + i, 999_999) > bound);
        }
        assert!(Uuid::now_v7() > first_id_at(Utc::now() - chrono::Duration::seconds(1)));
        assert_eq!(first_id_at(DateTime::<Utc>::MIN_UTC), Uuid::nil());
    }
}
