//! The EventDB in PostgreSQL: migrations, the batch transaction (events + entity state +
//! consumer offsets, atomically), and a private server for demos and tests.

pub mod attribute_indexes;
mod config;
mod connection;
mod console;
mod counts;
pub mod event_queries;
mod local_server;
mod migrations;
mod offsets_report;
pub(crate) mod retention;
mod state_cache;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use crate::detect::{AttributeState, DetectedEvent, StateKey, StateMap, StateWrite};
use crate::model::SourceRef;

pub use config::{DatabaseConfig, DatabaseUrl};
pub use console::Facets;
pub use local_server::{LocalPostgres, LocalPostgresError, ServerTls};
pub use offsets_report::{LastEvent, StoredOffset};
pub use state_cache::{Partition, StateCache};

/// How stale `entity_state.updated_at` may be. Ingestion moves it only when it is older than
/// this, so that most state updates change no indexed column and PostgreSQL can make them HOT
/// updates (no new index entries; sql/V12); the terminator's state horizon is widened by as
/// much, so that no state written within the horizon is pruned (docs/architecture.md,
/// "Schema").
pub(crate) const STATE_TOUCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The known state of a batch's entities (`$1` types, `$2` ids).
///
/// One primary-key lookup per entity, whatever the planner thinks of the table: the statement is
/// prepared once per connection, and a join planned while `entity_state` was small (a new
/// deployment, a test) became a hash join over a sequential scan of the whole table, kept for
/// every batch after. The lateral subquery with `OFFSET 0` is never flattened into a join, so
/// it can only run as a lookup per entity. The arrays are unnested as [`STATE_UPDATE`]'s are.
#[doc(hidden)]
pub const STATE_READ: &str = "\
    SELECT s.entity_type, s.entity_id, s.attribute, s.value, s.version, s.event_time, s.deleted, \
           s.source_topic, s.source_partition, s.source_offset, s.set_by \
    FROM (SELECT unnest($1::text[]) AS entity_type, unnest($2::text[]) AS entity_id) AS q \
    CROSS JOIN LATERAL ( \
        SELECT * FROM entity_state e \
        WHERE e.entity_type = q.entity_type AND e.entity_id = q.entity_id \
        OFFSET 0 \
    ) AS s";

/// How the batch transaction plans [`STATE_UPDATE`]: never by scanning `entity_state`. The
/// statement is prepared once per connection, and a plan made while the table was small (a new
/// deployment, a test) joins the arrays with a sequential scan of the table and would be kept
/// once it is large; without sequential scans the planner takes one primary-key lookup per
/// row whatever the table held. Local to the transaction, whose other statements look their
/// rows up by key too (without a usable index a scan is still taken: the setting only makes
/// scans look expensive).
#[doc(hidden)]
pub const STATE_UPDATE_PLAN: &str = "SET LOCAL enable_seqscan = off";

/// The compare-and-set update of state rows: `$1`–`$3` the keys, `$4`–`$11` the new state,
/// `$12`–`$19` the state detection started from, `$20` [`STATE_TOUCH_INTERVAL`] in seconds.
///
/// The statements that carry a batch's rows (this one, [`STATE_READ`], the inserts of new state
/// rows and of events) unnest their arrays in a select list, where PostgreSQL streams the rows
/// (`ProjectSet`), rather than in `FROM UNNEST(…)`, a function scan that first copies every row
/// into a tuplestore: the same rows (the arrays have one length), about a tenth less PostgreSQL
/// time per updated row and a twentieth per inserted one (README, "Where the time goes").
#[doc(hidden)]
pub const STATE_UPDATE: &str = "\
    UPDATE entity_state AS e SET \
      value = u.value, version = u.version, event_time = u.event_time, \
      deleted = u.deleted, source_topic = u.source_topic, \
      source_partition = u.source_partition, source_offset = u.source_offset, \
      set_by = u.set_by, \
      updated_at = CASE WHEN e.updated_at > now() - make_interval(secs => $20) \
                        THEN e.updated_at ELSE now() END \
    FROM (SELECT unnest($1::text[]) AS entity_type, unnest($2::text[]) AS entity_id, \
                 unnest($3::text[]) AS attribute, \
                 unnest($4::text[]) AS value, unnest($5::bigint[]) AS version, \
                 unnest($6::timestamptz[]) AS event_time, unnest($7::bool[]) AS deleted, \
                 unnest($8::text[]) AS source_topic, unnest($9::int[]) AS source_partition, \
                 unnest($10::bigint[]) AS source_offset, unnest($11::text[]) AS set_by, \
                 unnest($12::text[]) AS was_value, unnest($13::bigint[]) AS was_version, \
                 unnest($14::timestamptz[]) AS was_event_time, unnest($15::bool[]) AS was_deleted, \
                 unnest($16::text[]) AS was_source_topic, unnest($17::int[]) AS was_source_partition, \
                 unnest($18::bigint[]) AS was_source_offset, unnest($19::text[]) AS was_set_by) AS u \
    WHERE e.entity_type = u.entity_type AND e.entity_id = u.entity_id \
      AND e.attribute = u.attribute \
      AND e.value IS NOT DISTINCT FROM u.was_value \
      AND e.version IS NOT DISTINCT FROM u.was_version \
      AND e.event_time = u.was_event_time AND e.deleted = u.was_deleted \
      AND e.source_topic IS NOT DISTINCT FROM u.was_source_topic \
      AND e.source_partition IS NOT DISTINCT FROM u.was_source_partition \
      AND e.source_offset IS NOT DISTINCT FROM u.was_source_offset \
      AND e.set_by IS NOT DISTINCT FROM u.was_set_by";

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another consumer moved this partition on: the batch was rolled back.
    #[error(
        "offset fence failed for {topic}[{partition}]: another consumer owns the partition now"
    )]
    Fenced {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// The batch stored before this one on the same partitions did not commit (it is retried,
    /// or its partitions are read again): this one was rolled back and waits for it.
    #[error("the batch before this one on its partitions did not commit")]
    PredecessorFailed,
    /// The state the batch before this one handed over was changed by another writer before
    /// this one read it again: this one was rolled back, to be stored again against the state
    /// as it is.
    #[error("the state handed over by the batch before this one was changed meanwhile")]
    HandoverStale,
    /// A state row the batch writes is no longer the one it detected against (another writer
    /// or the terminator changed it after the batch read it or the state cache remembered it):
    /// the batch was rolled back and its entities forgotten, to be stored again against the
    /// state as it is.
    #[error("the state of an entity of the batch was changed by another writer")]
    StateMoved,
    /// No connection could be had.
    #[error("database unavailable: {message}")]
    Pool {
        /// What went wrong, with its causes.
        message: String,
        /// Whether waiting may help (an outage), unlike a refusal (unknown database, wrong
        /// password).
        transient: bool,
    },
    /// A statement failed.
    #[error("database error: {}", crate::error_report::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database settings are unusable.
    #[error("database configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether the batch can simply be retried later (outage, deadlock, serialization).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool { transient, .. } => *transient,
            StoreError::Db(e) => transient_pg_error(e),
            _ => false,
        }
    }
}

/// Whether a driver error may go away by itself: a connection-level failure, or a SQLSTATE of
/// connection exception, deadlock or serialization failure, insufficient resources, or the
/// server shutting down or starting up.
fn transient_pg_error(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("40") || c.starts_with("53") || c.starts_with("57")
        }
    }
}

/// The expected and new position of one partition, written with the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFence {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The stored next offset this consumer believes in (`None`: nothing stored yet).
    pub expected: Option<i64>,
    /// The next offset after this batch.
    pub next: i64,
}

/// An event ready to be stored, with the coordinates that make it unique.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The detected change.
    pub event: DetectedEvent,
    /// The message it came from.
    pub source: SourceRef,
    /// Its position among the events of that message.
    pub seq: i32,
}

/// What detection produced for a batch, to be written in its transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchChanges {
    /// Events to insert.
    pub events: Vec<NewEvent>,
    /// State rows to write, each a compare-and-set against the state detection started from.
    pub states: Vec<StateWrite>,
}

/// What a committed batch wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events inserted (re-deliveries already stored are not counted).
    pub events_inserted: u64,
    /// State rows written.
    pub states_written: u64,
    /// Entities whose state came from the state cache instead of the EventDB.
    pub entities_recalled: u64,
    /// Entities read in the EventDB.
    pub entities_read: u64,
}

/// How a batch's transaction takes its turn behind the batch stored before it on the same
/// partitions (docs/architecture.md, "Exactly once").
///
/// Every batch first takes the *turns* at its next positions (advisory locks, held until it
/// ends). Alone, it checks its offset fences at once and fails fast. Behind a predecessor still
/// in flight, it reads its entities' state and writes its events and state meanwhile; then it
/// waits for the turns at its expected positions (the predecessor's next ones: a wait
/// PostgreSQL's deadlock detector sees), then for `after` to say the predecessor committed, and
/// only then checks its fences and writes its counts (the predecessor writes the same count
/// rows). The caller starts it only once the predecessor has run detection, so that it can hand
/// its entities' state over.
///
/// The entities the predecessor has too are not read meanwhile (the predecessor writes them):
/// their state is taken from its [`Handover`]s (one per transaction of the predecessor with
/// this batch's partitions), and once the predecessor committed their state is read and
/// compared with it. Where another writer changed it in between (or two of the predecessor's
/// transactions had the entity, and the one that committed last left another state than the
/// one taken), the batch rolls back with [`StoreError::HandoverStale`].
pub struct Turn<L, W> {
    /// Called once the batch has read its state and run detection, with what the batch leaves
    /// the one after it: that one may start.
    pub detected: L,
    /// `None`: alone. `Some`: waits for the predecessor; `false` rolls this batch back with
    /// [`StoreError::PredecessorFailed`].
    pub after: Option<W>,
    /// What the predecessor's transactions with this batch's partitions leave (used only with
    /// `after`).
    pub handover: Vec<Arc<Handover>>,
}

/// An entity's type and id.
type EntityRef<'a> = (&'a str, &'a str);

/// What a batch leaves the batch stored behind it: its entities and their state as it stands
/// once it commits.
#[derive(Debug, Default)]
pub struct Handover {
    /// The entities of the transaction, as `type NUL id`.
    entities: foldhash::HashSet<String>,
    states: StateMap,
}

/// The state cache a batch uses: `partitions[i]` is the one partition `entities[i]` was read
/// from in the batch, `None` when it came from several (then it is read).
#[derive(Clone, Copy)]
pub struct CacheUse<'a> {
    /// The consumer's cache.
    pub cache: &'a StateCache,
    /// Per entity of the batch, in the same order.
    pub partitions: &'a [Option<Partition>],
}

/// The prune count the state cache's entries are valid under (sql/V17): 0 before the first
/// `nextval`, which leaves `last_value` at the sequence's start and only sets `is_called`.
const PRUNE_COUNT: &str =
    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM entity_state_prunes";

/// The turn of a batch with nothing before it in flight.
pub type Alone = Turn<fn(Arc<Handover>), fn() -> std::future::Ready<bool>>;

impl Alone {
    /// Fences first, nobody to tell.
    pub fn alone() -> Self {
        Turn {
            detected: |_| {},
            after: None,
            handover: Vec::new(),
        }
    }
}

/// The EventDB.
#[derive(Clone)]
pub struct EventStore {
    /// Connections of ingestion, the terminator and migrations.
    pool: Pool,
    /// Connections of the query API, which run generic plans (see [`EventStore::connect`]).
    api_pool: Pool,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore")
            .field("pool", &self.pool.status())
            .field("api_pool", &self.api_pool.status())
            .finish()
    }
}

impl EventStore {
    /// Reads the stored next offsets of a consumer group for the given partitions.
    pub async fn load_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>, StoreError> {
        let client = self.client().await?;
        let topics: Vec<&str> = partitions.iter().map(|(t, _)| t.as_str()).collect();
        let parts: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let stmt = client
            .prepare_cached(
                "SELECT o.topic, o.partition, o.next_offset FROM consumer_offsets o \
                 JOIN UNNEST($2::text[], $3::int[]) AS q(topic, partition) \
                   ON o.topic = q.topic AND o.partition = q.partition \
                 WHERE o.group_id = $1",
            )
            .await?;
        let rows = client.query(&stmt, &[&group_id, &topics, &parts]).await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    (r.get::<_, String>(0), r.get::<_, i32>(1)),
                    r.get::<_, i64>(2),
                )
            })
            .collect())
    }

    /// Sets stored positions (replay). Running consumers of the group notice through their fence.
    pub async fn set_offsets(
        &self,
        group_id: &str,
        positions: &[(String, i32, i64)],
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let topics: Vec<&str> = positions.iter().map(|(t, _, _)| t.as_str()).collect();
        let parts: Vec<i32> = positions.iter().map(|(_, p, _)| *p).collect();
        let offsets: Vec<i64> = positions.iter().map(|(_, _, o)| *o).collect();
        client
            .execute(
                "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::int[], $4::bigint[]) \
                 ON CONFLICT (group_id, topic, partition) DO UPDATE \
                 SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                &[&group_id, &topics, &parts, &offsets],
            )
            .await?;
        Ok(())
    }

    /// Writes one batch in one transaction: first the offset fences (a consumer whose partition
    /// moved on fails here and the whole batch rolls back), then the known state of the batch's
    /// entities is read, `detect` runs against it, and the events and new state are written.
    /// Every state write is a compare-and-set against the state read: should another writer
    /// (another consumer with the same entity) have changed it meanwhile, the batch rolls back
    /// with [`StoreError::StateMoved`], to be stored again.
    pub async fn apply_batch<F>(
        &self,
        group_id: &str,
        fences: &[OffsetFence],
        entities: &[(String, String)],
        detect: F,
    ) -> Result<BatchReport, StoreError>
    where
        F: FnOnce(&mut StateMap) -> BatchChanges,
    {
        self.apply_batch_in_turn(group_id, fences, entities, detect, Alone::alone(), None)
            .await
    }

    /// [`EventStore::apply_batch`], taking its turn behind the batch before it (see [`Turn`]),
    /// and detecting against the state `cache` remembers of the entities it has (see
    /// [`StateCache`]) instead of reading them. Every state row the batch writes is
    /// a compare-and-set against the state it detected against; should one have moved, the
    /// batch rolls back with [`StoreError::StateMoved`] and its entities are forgotten.
    pub async fn apply_batch_in_turn<F, L, W, Fut>(
        &self,
        group_id: &str,
        fences: &[OffsetFence],
        entities: &[(String, String)],
        detect: F,
        turn: Turn<L, W>,
        cache: Option<CacheUse<'_>>,
    ) -> Result<BatchReport, StoreError>
    where
        F: FnOnce(&mut StateMap) -> BatchChanges,
        L: FnOnce(Arc<Handover>),
        W: FnOnce() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let cache = cache.filter(|c| c.cache.enabled());
        // Sorted and without duplicates: the state is read once per entity, in key order (the
        // state rows are written in key order by `write_states`).
        let mut sorted: Vec<(&str, &str, Option<&Partition>)> = entities
            .iter()
            .enumerate()
            .map(|(i, (t, id))| {
                let partition = cache.and_then(|c| c.partitions.get(i)?.as_ref());
                (t.as_str(), id.as_str(), partition)
            })
            .collect();
        sorted.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        sorted.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
        let result = self
            .store_batch(group_id, fences, &sorted, detect, turn, cache)
            .await;
        if let (Err(StoreError::StateMoved | StoreError::HandoverStale), Some(c)) = (&result, cache)
        {
            c.cache.evict(remembered_under(&sorted));
        }
        result
    }

    /// The transaction of [`EventStore::apply_batch_in_turn`], over its entities sorted and
    /// each with the partition the cache may remember it under.
    async fn store_batch<F, L, W, Fut>(
        &self,
        group_id: &str,
        fences: &[OffsetFence],
        sorted: &[(&str, &str, Option<&Partition>)],
        detect: F,
        turn: Turn<L, W>,
        cache: Option<CacheUse<'_>>,
    ) -> Result<BatchReport, StoreError>
    where
        F: FnOnce(&mut StateMap) -> BatchChanges,
        L: FnOnce(Arc<Handover>),
        W: FnOnce() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The turn of the batch after this one, which waits for it in take_turn.
        let next: Vec<(&OffsetFence, i64)> = fences.iter().map(|f| (f, f.next)).collect();
        // Read with the turns: the cache's entries are valid only under the prune count they
        // were read under.
        let prunes = async {
            match cache {
                Some(_) => {
                    let statement = tx.prepare_cached(PRUNE_COUNT).await?;
                    Ok::<_, StoreError>(Some(tx.query_one(&statement, &[]).await?.get::<_, i64>(0)))
                }
                None => Ok(None),
            }
        };
        let epoch = if turn.after.is_some() {
            futures::try_join!(lock_turns(&tx, group_id, &next), prunes)?.1
        } else {
            futures::try_join!(
                lock_turns(&tx, group_id, &next),
                check_fences(&tx, group_id, fences),
                prunes
            )?
            .2
        };

        // The entities the predecessor in flight writes are read only once it committed.
        let handovers: &[Arc<Handover>] = match turn.after {
            Some(_) => &turn.handover,
            None => &[],
        };
        let mut key = String::new();
        let (shared, own): (Vec<EntityRef<'_>>, Vec<EntityRef<'_>>) = sorted
            .iter()
            .map(|(t, id, _)| (*t, *id))
            .partition(|(t, id)| {
                !handovers.is_empty() && {
                    state_cache::fill_key(&mut key, t, id);
                    handovers.iter().any(|h| h.entities.contains(key.as_str()))
                }
            });
        let shared_set: foldhash::HashSet<(&str, &str)> = shared.iter().copied().collect();
        let is_shared =
            |k: &StateKey| shared_set.contains(&(k.entity_type.as_str(), k.entity_id.as_str()));
        let mut states = StateMap::with_capacity_and_hasher(sorted.len(), Default::default());
        // The entities the cache remembers (read from one partition, not shared) are not read:
        // their state is the remembered one.
        let recalled = match (cache, epoch) {
            (Some(c), Some(epoch)) => c.cache.recall(
                epoch,
                remembered_under(sorted).filter(|(t, id, _)| !shared_set.contains(&(*t, *id))),
                &mut states,
            ),
            _ => Default::default(),
        };
        let read: Vec<EntityRef<'_>> = match recalled.len() {
            0 => own,
            _ => own
                .into_iter()
                .filter(|(t, id)| !recalled.contains(t, id))
                .collect(),
        };
        read_states(&tx, &read, &mut states).await?;
        // An entity two of the predecessor's transactions had is taken from the first: should
        // the other have committed last, the comparison after the turn finds it stale.
        let mut handed = StateMap::default();
        if !shared.is_empty() {
            for h in handovers.iter().rev() {
                handed.extend(
                    h.states
                        .iter()
                        .filter(|(k, _)| is_shared(k))
                        .map(|(k, s)| (k.clone(), s.clone())),
                );
            }
        }
        states.extend(handed.iter().map(|(k, s)| (k.clone(), s.clone())));

        let mut changes = detect(&mut states);
        let left = Arc::new(Handover {
            entities: sorted
                .iter()
                .map(|(t, id, _)| state_cache::entity_key(t, id))
                .collect(),
            states,
        });
        (turn.detected)(Arc::clone(&left));
        // The new state of shared entities is written once their state is checked.
        let (shared_states, own_states): (Vec<_>, Vec<_>) = std::mem::take(&mut changes.states)
            .into_iter()
            .partition(|w| is_shared(&w.key));
        changes.states = own_states;
        let mut after = turn.after;
        // Every transaction locks its `entity_state` rows before its count rows (each in key
        // order), so that two writers of one entity never wait for each other in a circle: the
        // batch's counts are written last, and events older than the count buckets' origin,
        // which the insert trigger counts, are inserted once the state is written. Such a batch
        // also waits for its turn first (its predecessor takes count rows too).
        let countable = counts::countable(changes.events.iter().map(|e| &e.event));
        if !countable {
            take_turn(&tx, group_id, fences, after.take()).await?;
        }
        let insert = || async {
            match changes.events.is_empty() {
                true => Ok((0, None)),
                false => insert_events(&tx, &changes.events).await,
            }
        };
        // Sent together where they take no common locks: the events and the new state.
        let ((mut events_inserted, mut counts), mut states_written) = match countable {
            true => futures::try_join!(insert(), write_states(&tx, &mut changes.states))?,
            false => ((0, None), write_states(&tx, &mut changes.states).await?),
        };
        take_turn(&tx, group_id, fences, after).await?;
        let mut shared_states = shared_states;
        if !shared.is_empty() {
            let mut found = StateMap::default();
            read_states(&tx, &shared, &mut found).await?;
            if found != handed {
                return Err(StoreError::HandoverStale);
            }
            states_written += write_states(&tx, &mut shared_states).await?;
        }
        if !countable {
            (events_inserted, counts) = insert().await?;
        }
        if let Some(counts) = counts {
            counts.write(&tx).await?;
        }
        tx.commit().await?;
        if let (Some(c), Some(epoch)) = (cache, epoch) {
            let written = changes
                .states
                .into_iter()
                .chain(shared_states)
                .map(|w| (w.key, w.state))
                .collect();
            c.cache.remember(
                epoch,
                &recalled,
                remembered_under(sorted),
                &left.states,
                written,
            );
        }
        Ok(BatchReport {
            events_inserted,
            states_written,
            entities_recalled: recalled.len() as u64,
            entities_read: (read.len() + shared.len()) as u64,
        })
    }
}

/// The entities of a batch the state cache may remember, each with its partition.
fn remembered_under<'a>(
    sorted: &'a [(&'a str, &'a str, Option<&'a Partition>)],
) -> impl Iterator<Item = (&'a str, &'a str, &'a Partition)> {
    sorted
        .iter()
        .filter_map(|(t, id, p)| Some((*t, *id, (*p)?)))
}

/// Reads the known state of `entities` into `states`. Nothing is locked: every write of the
/// state is a compare-and-set against what was read (see [`write_states`]).
async fn read_states(
    tx: &deadpool_postgres::Transaction<'_>,
    entities: &[(&str, &str)],
    states: &mut StateMap,
) -> Result<(), StoreError> {
    if entities.is_empty() {
        return Ok(());
    }
    let types: Vec<&str> = entities.iter().map(|(t, _)| *t).collect();
    let ids: Vec<&str> = entities.iter().map(|(_, id)| *id).collect();
    let select = tx.prepare_cached(STATE_READ).await?;
    let rows = tx.query(&select, &[&types, &ids]).await?;
    // The rows of a partition's entities name one topic: it is shared, as the batch's own
    // sources share it.
    let mut topic: Option<Arc<str>> = None;
    for row in rows {
        let source = match (row.get::<_, Option<&str>>(7), row.get(8), row.get(9)) {
            (Some(name), Some(partition), Some(offset)) => Some(SourceRef {
                topic: match &topic {
                    Some(t) if **t == *name => Arc::clone(t),
                    _ => Arc::clone(topic.insert(Arc::from(name))),
                },
                partition,
                offset,
            }),
            _ => None,
        };
        states.insert(
            StateKey {
                entity_type: row.get(0),
                entity_id: row.get(1),
                attribute: row.get(2),
            },
            AttributeState {
                value: row.get(3),
                version: row.get(4),
                event_time: row.get(5),
                deleted: row.get(6),
                source,
                set_by: row.get(10),
            },
        );
    }
    Ok(())
}

/// Behind a predecessor (`after` is `Some`): waits until it committed, then checks the fences.
async fn take_turn<W, Fut>(
    tx: &deadpool_postgres::Transaction<'_>,
    group_id: &str,
    fences: &[OffsetFence],
    after: Option<W>,
) -> Result<(), StoreError>
where
    W: FnOnce() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Some(after) = after else {
        return Ok(());
    };
    // The predecessor's transactions hold the turns at this batch's expected positions until
    // they end: waiting for them in PostgreSQL lets its deadlock detector see the wait.
    let expected: Vec<(&OffsetFence, i64)> = fences
        .iter()
        .filter_map(|f| f.expected.map(|e| (f, e)))
        .collect();
    lock_turns(tx, group_id, &expected).await?;
    if !after().await {
        return Err(StoreError::PredecessorFailed);
    }
    check_fences(tx, group_id, fences).await
}

/// Takes the turns of partition positions: transaction-scoped advisory locks, one per
/// `(group, topic, partition, offset)`, in sorted order. A batch takes the turns at its next
/// positions first thing; the batch behind it waits for them before its fences (see [`Turn`]).
async fn lock_turns(
    tx: &deadpool_postgres::Transaction<'_>,
    group_id: &str,
    positions: &[(&OffsetFence, i64)],
) -> Result<(), StoreError> {
    if positions.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = positions.iter().map(|(f, _)| f.topic.as_str()).collect();
    let partitions: Vec<i32> = positions.iter().map(|(f, _)| f.partition).collect();
    let offsets: Vec<i64> = positions.iter().map(|(_, o)| *o).collect();
    let statement = tx
        .prepare_cached(
            "SELECT count(pg_advisory_xact_lock(k)) FROM ( \
                SELECT DISTINCT hashtextextended($1 || '/' || t || '/' || p, o) AS k \
                FROM UNNEST($2::text[], $3::int[], $4::bigint[]) AS u(t, p, o) \
                ORDER BY k OFFSET 0) AS turns",
        )
        .await?;
    tx.query_one(&statement, &[&group_id, &topics, &partitions, &offsets])
        .await?;
    Ok(())
}

/// The offset fences of a batch: each partition's stored position must be the one the batch
/// expects, and moves to the batch's next offset. A consumer whose partition moved on (another
/// owner, a replay) fails here and its batch rolls back.
async fn check_fences(
    tx: &deadpool_postgres::Transaction<'_>,
    group_id: &str,
    fences: &[OffsetFence],
) -> Result<(), StoreError> {
    let mut fences: Vec<&OffsetFence> = fences.iter().collect();
    fences.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let update = tx
        .prepare_cached(
            "UPDATE consumer_offsets SET next_offset = $5, updated_at = now() \
             WHERE group_id = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
        )
        .await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .await?;
    // Sent together: tokio-postgres pipelines them on the connection.
    let checks = fences.iter().map(|fence| {
        let (update, insert) = (&update, &insert);
        async move {
            let rows = match fence.expected {
                Some(expected) => {
                    tx.execute(
                        update,
                        &[
                            &group_id,
                            &fence.topic,
                            &fence.partition,
                            &expected,
                            &fence.next,
                        ],
                    )
                    .await?
                }
                None => {
                    tx.execute(
                        insert,
                        &[&group_id, &fence.topic, &fence.partition, &fence.next],
                    )
                    .await?
                }
            };
            Ok::<_, tokio_postgres::Error>((rows, *fence))
        }
    });
    for (rows, fence) in futures::future::try_join_all(checks).await? {
        if rows != 1 {
            return Err(StoreError::Fenced {
                topic: fence.topic.clone(),
                partition: fence.partition,
            });
        }
    }

    Ok(())
}

/// Inserts the events; returns how many were new and, unless the insert trigger counted them
/// (an event older than the count buckets' origin), their counts for the caller to write.
async fn insert_events<'e>(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &'e [NewEvent],
) -> Result<(u64, Option<counts::Counts<'e>>), StoreError> {
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut event_types = Vec::with_capacity(n);
    let mut entity_types = Vec::with_capacity(n);
    let mut entity_ids = Vec::with_capacity(n);
    let mut properties = Vec::with_capacity(n);
    let mut event_times: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut changed_by = Vec::with_capacity(n);
    let mut topics = Vec::with_capacity(n);
    let mut partitions = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    for e in events {
        ids.push(uuid::Uuid::now_v7());
        event_types.push(e.event.event_type.as_str());
        entity_types.push(e.event.entity_type.as_str());
        entity_ids.push(e.event.entity_id.as_str());
        properties.push(&e.event.properties);
        event_times.push(e.event.event_time);
        changed_by.push(e.event.changed_by.as_deref());
        topics.push(&*e.source.topic);
        partitions.push(e.source.partition);
        offsets.push(e.source.offset);
        seqs.push(e.seq);
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO events (id, event_type, entity_type, entity_id, properties, event_time, \
                                 changed_by, source_topic, source_partition, source_offset, source_seq) \
             SELECT unnest($1::uuid[]), unnest($2::text[]), unnest($3::text[]), unnest($4::text[]), \
                    unnest($5::jsonb[]), unnest($6::timestamptz[]), unnest($7::text[]), \
                    unnest($8::text[]), unnest($9::int[]), unnest($10::bigint[]), unnest($11::int[]) \
             ON CONFLICT ON CONSTRAINT events_source_unique DO NOTHING \
             RETURNING id",
        )
        .await?;
    // The batch counts its events itself unless one is older than the count buckets' origin
    // (sql/V10); the setting travels with the insert.
    let by_writer = counts::countable(events.iter().map(|e| &e.event));
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
        &ids,
        &event_types,
        &entity_types,
        &entity_ids,
        &properties,
        &event_times,
        &changed_by,
        &topics,
        &partitions,
        &offsets,
        &seqs,
    ];
    // Both prepared, so that the two are sent together in this order (an unprepared statement
    // would be parsed first, letting the insert overtake it).
    let counts_written = tx.prepare_cached(counts::COUNTS_WRITTEN).await?;
    let (_, inserted) = futures::try_join!(
        async {
            if by_writer {
                tx.execute(&counts_written, &[]).await
            } else {
                Ok(0)
            }
        },
        tx.query(&stmt, &params),
    )?;
    if by_writer {
        // Re-deliveries already stored were not inserted, and are not counted again.
        let inserted: std::collections::HashSet<uuid::Uuid> =
            inserted.iter().map(|row| row.get(0)).collect();
        let mut batch = counts::Counts::default();
        for (e, id) in events.iter().zip(&ids) {
            if inserted.contains(id) {
                batch.add(&e.event);
            }
        }
        return Ok((inserted.len() as u64, Some(batch)));
    }
    Ok((inserted.len() as u64, None))
}

/// Writes the new state of attributes, each a compare-and-set against its `before`, the state
/// detection started from: an attribute that had a row is updated only where the row is still
/// exactly that one, and one that had none is inserted only where there is still none. Should
/// any row not be written, the batch fails with [`StoreError::StateMoved`]. Sorted by key, so
/// that concurrent writers take the rows' locks in the same order.
async fn write_states(
    tx: &deadpool_postgres::Transaction<'_>,
    states: &mut [StateWrite],
) -> Result<u64, StoreError> {
    if states.is_empty() {
        return Ok(0);
    }
    states.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let (updates, inserts): (Vec<&StateWrite>, Vec<&StateWrite>) =
        states.iter().partition(|w| w.before.is_some());
    let (updated, inserted) = futures::try_join!(
        async {
            match updates.is_empty() {
                true => Ok(0),
                false => update_states(tx, &updates).await,
            }
        },
        async {
            match inserts.is_empty() {
                true => Ok(0),
                false => insert_states(tx, &inserts).await,
            }
        }
    )?;
    if updated != updates.len() as u64 || inserted != inserts.len() as u64 {
        return Err(StoreError::StateMoved);
    }
    Ok(updated + inserted)
}

/// The columns of `entity_state` as arrays, in the order of the statements below.
struct StateColumns<'s> {
    entity_types: Vec<&'s str>,
    entity_ids: Vec<&'s str>,
    attributes: Vec<&'s str>,
    values: Vec<Option<&'s str>>,
    versions: Vec<Option<i64>>,
    times: Vec<DateTime<Utc>>,
    deleted: Vec<bool>,
    topics: Vec<Option<&'s str>>,
    partitions: Vec<Option<i32>>,
    offsets: Vec<Option<i64>>,
    set_by: Vec<Option<&'s str>>,
}

impl<'s> StateColumns<'s> {
    fn with_capacity(n: usize) -> Self {
        Self {
            entity_types: Vec::with_capacity(n),
            entity_ids: Vec::with_capacity(n),
            attributes: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            times: Vec::with_capacity(n),
            deleted: Vec::with_capacity(n),
            topics: Vec::with_capacity(n),
            partitions: Vec::with_capacity(n),
            offsets: Vec::with_capacity(n),
            set_by: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, k: &'s StateKey, s: &'s AttributeState) {
        self.entity_types.push(k.entity_type.as_str());
        self.entity_ids.push(k.entity_id.as_str());
        self.attributes.push(k.attribute.as_str());
        self.push_state(s);
    }

    fn push_state(&mut self, s: &'s AttributeState) {
        self.values.push(s.value.as_deref());
        self.versions.push(s.version);
        self.times.push(s.event_time);
        self.deleted.push(s.deleted);
        self.topics.push(s.source.as_ref().map(|at| &*at.topic));
        self.partitions
            .push(s.source.as_ref().map(|at| at.partition));
        self.offsets.push(s.source.as_ref().map(|at| at.offset));
        self.set_by.push(s.set_by.as_deref());
    }

    /// The state's eight columns (after the key's three).
    fn state(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            &self.values,
            &self.versions,
            &self.times,
            &self.deleted,
            &self.topics,
            &self.partitions,
            &self.offsets,
            &self.set_by,
        ]
    }
}

/// Updates rows that are still exactly the state detection started from; returns how many.
async fn update_states(
    tx: &deadpool_postgres::Transaction<'_>,
    writes: &[&StateWrite],
) -> Result<u64, StoreError> {
    let mut new = StateColumns::with_capacity(writes.len());
    let mut old = StateColumns::with_capacity(writes.len());
    for w in writes {
        new.push(&w.key, &w.state);
        if let Some(was) = &w.before {
            old.push_state(was);
        }
    }
    // A join with the arrays, one primary-key lookup per row (STATE_UPDATE_PLAN). A row
    // another transaction changes meanwhile is compared again in its new version (READ
    // COMMITTED), so a write never replaces state it did not detect against.
    let (plan, stmt) = futures::try_join!(
        tx.prepare_cached(STATE_UPDATE_PLAN),
        tx.prepare_cached(STATE_UPDATE)
    )?;
    let touch = STATE_TOUCH_INTERVAL.as_secs_f64();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&new.entity_types, &new.entity_ids, &new.attributes];
    params.extend(new.state());
    params.extend(old.state());
    params.push(&touch);
    // Sent together, in this order.
    let (_, updated) = futures::try_join!(tx.execute(&plan, &[]), tx.execute(&stmt, &params))?;
    Ok(updated)
}

/// Inserts rows where there still is none; returns how many.
async fn insert_states(
    tx: &deadpool_postgres::Transaction<'_>,
    writes: &[&StateWrite],
) -> Result<u64, StoreError> {
    let mut new = StateColumns::with_capacity(writes.len());
    for w in writes {
        new.push(&w.key, &w.state);
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO entity_state (entity_type, entity_id, attribute, value, version, event_time, deleted, \
                                       source_topic, source_partition, source_offset, set_by) \
             SELECT unnest($1::text[]), unnest($2::text[]), unnest($3::text[]), unnest($4::text[]), \
                    unnest($5::bigint[]), unnest($6::timestamptz[]), unnest($7::bool[]), \
                    unnest($8::text[]), unnest($9::int[]), unnest($10::bigint[]), unnest($11::text[]) \
             ON CONFLICT (entity_type, entity_id, attribute) DO NOTHING",
        )
        .await?;
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&new.entity_types, &new.entity_ids, &new.attributes];
    params.extend(new.state());
    Ok(tx.execute(&stmt, &params).await?)
}
