//! The events API's queries (`GET /api/events`, `GET /api/events/{id}`) behind typed
//! functions: the API hands in a validated [`EventsQuery`] and gets [`EventRow`]s back, read
//! straight from the driver's buffers when it writes them into a response.

mod list;

use chrono::{DateTime, Utc};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::Row;

use super::{EventStore, StoreError};

pub(crate) use list::TIME_FIRST_WINDOW_HOURS;
pub use list::{list_sql, whole_minutes, whole_spans, ListSql, Param};

/// How the list filters on `properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeFilter {
    /// Events whose properties have this attribute.
    Exists(String),
    /// Events whose `properties -> name ->> 'new_value'` equals `value`.
    NewValue {
        /// Attribute name.
        name: String,
        /// Its new value.
        value: String,
    },
}

/// A validated list request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// Window start (inclusive).
    pub from: DateTime<Utc>,
    /// Window end (exclusive).
    pub to: DateTime<Utc>,
    /// `event_type` filter.
    pub event_type: Option<String>,
    /// `entity_type` filter.
    pub entity_type: Option<String>,
    /// `attribute_name` / `new_value` filter.
    pub attribute: Option<AttributeFilter>,
    /// Whether the attribute filter has an index of its own: for `attribute_name` alone, one
    /// by time (`api.indexed_attributes`); with `new_value`, one by new value and time
    /// (`api.indexed_values` too; `store::attribute_indexes`).
    pub attribute_indexed: bool,
    /// 1-based page number.
    pub page: u32,
    /// Events per page.
    pub page_size: u32,
    /// When the request was read. Events are not expected to be timed after it, which tells
    /// the total which part of the window's last minute holds fewer rows ([`list_sql`]).
    pub now: DateTime<Utc>,
}

/// The settings of the query API's sessions, unless the URL's `options` set them:
/// - `plan_cache_mode`: prepared statements run their generic plan from the first execution
///   instead of being planned again every time (PostgreSQL keeps custom plans when their
///   estimated cost is lower, which for short LIMIT queries is always; planning cost as much as
///   running them). Every API statement is written so that its generic plan uses the right
///   index (tests/it/api/indexes.rs); the ones that need a plan for their values ask for it
///   (`SET LOCAL`, [`planned_for_values`]).
/// - `enable_bitmapscan`: a generic plan guesses that a time range holds 0.5 % of the table,
///   so on a small or young table it expects a page's window to hold a few rows and reads them
///   all through a bitmap, then sorts them — every row of the window, where reading the
///   B-tree in order stops after a page (measured: 320 ms instead of about 1 ms for
///   `entity_type` + `attribute_name` over an hour of 37 000 rows). The windows planned for
///   their values, whose rare attributes are found through the GIN indexes (bitmap scans
///   only), switch them on again.
/// - `enable_seqscan`: the same trap for the count tables. A generic plan made while a count
///   table is tiny (a young deployment, or the first minutes of a bench) reads it whole for
///   every sum, and keeps doing so as it grows until the next `ANALYZE`; every API statement
///   reads its counts and rows by a key or a range of an index, so the API's sessions leave
///   sequential scans to the planner's last resort. The windows planned for their values
///   switch them on again too.
pub const API_SESSION_SETTINGS: [(&str, &str); 3] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_bitmapscan", "off"),
    ("enable_seqscan", "off"),
];

const COLUMNS: &str = "id, event_type, entity_type, entity_id, properties, event_time, changed_by";
/// The page query's column after [`COLUMNS`]: the window's total.
const TOTAL_COLUMN: usize = 7;

/// One page of a list request.
pub(crate) struct EventPage {
    /// The page's events, ordered by `event_time`, then `id`.
    pub(crate) rows: Vec<EventRow>,
    /// Events matching the filters in the whole window.
    pub(crate) total_entries: i64,
}

/// One row of `events` as the database sent it.
pub(crate) struct EventRow(Row);

/// One stored event, borrowed from its [`EventRow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredEvent<'a> {
    /// Event identifier (UUID v7).
    pub(crate) id: uuid::Uuid,
    /// Event type.
    pub(crate) event_type: &'a str,
    /// Type of the changed entity.
    pub(crate) entity_type: &'a str,
    /// Identifier of the changed entity.
    pub(crate) entity_id: &'a str,
    /// `properties` as PostgreSQL wrote it: `jsonb` output is always valid JSON, so it can be
    /// copied into a response as it is, without parsing it again.
    pub(crate) properties: &'a str,
    /// When the change happened.
    pub(crate) event_time: DateTime<Utc>,
    /// Who made the change, when known.
    pub(crate) changed_by: Option<&'a str>,
}

impl EventRow {
    /// Reads the row's columns.
    pub(crate) fn event(&self) -> Result<StoredEvent<'_>, StoreError> {
        let row = &self.0;
        Ok(StoredEvent {
            id: row.try_get(0)?,
            event_type: row.try_get(1)?,
            entity_type: row.try_get(2)?,
            entity_id: row.try_get(3)?,
            properties: row.try_get::<_, RawJson<'_>>(4)?.0,
            event_time: row.try_get(5)?,
            changed_by: row.try_get(6)?,
        })
    }
}

/// A JSON document borrowed from a row, as PostgreSQL sent it.
struct RawJson<'a>(&'a str);

impl<'a> FromSql<'a> for RawJson<'a> {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = match (ty == &Type::JSONB, raw.split_first()) {
            (false, _) => raw,
            (true, Some((1, text))) => text,
            (true, _) => return Err("unsupported jsonb format version".into()),
        };
        Ok(RawJson(std::str::from_utf8(text)?))
    }

    tokio_postgres::types::accepts!(JSON, JSONB);
}

impl EventStore {
    /// The page of events `query` asks for, without the types in `hidden_types`, and the total
    /// of its window, on the query API's pool.
    pub(crate) async fn list_events(
        &self,
        query: &EventsQuery,
        hidden_types: Vec<String>,
    ) -> Result<EventPage, StoreError> {
        let sql = list_sql(query, hidden_types);
        let mut client = self.api_client().await?;
        let rows = page(&sql, &mut client).await?;
        let total_entries = match rows.first() {
            Some(row) => row.try_get(TOTAL_COLUMN)?,
            // An empty first page means an empty window; past the end, the total is asked for.
            None if sql.offset == 0 => 0,
            None => total(&sql, &mut client).await?,
        };
        Ok(EventPage {
            rows: rows.into_iter().map(EventRow).collect(),
            total_entries,
        })
    }

    /// The event with this id, if there is one.
    pub(crate) async fn event(&self, id: uuid::Uuid) -> Result<Option<EventRow>, StoreError> {
        let client = self.api_client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE id = $1"))
            .await?;
        Ok(client.query_opt(&stmt, &[&id]).await?.map(EventRow))
    }
}

type Values<'a> = Vec<&'a (dyn ToSql + Sync)>;

fn split<'a>(params: &[(&'a (dyn ToSql + Sync), Type)]) -> (Values<'a>, Vec<Type>) {
    params.iter().map(|(v, t)| (*v, t.clone())).unzip()
}

/// Runs the page query.
async fn page(
    sql: &ListSql,
    client: &mut deadpool_postgres::Client,
) -> Result<Vec<Row>, StoreError> {
    let params = sql.page_params();
    if !sql.prepared_list {
        return planned_for_values(client, &sql.list, &params).await;
    }
    let (values, types) = split(&params);
    let stmt = client.prepare_typed_cached(&sql.list, &types).await?;
    Ok(client.query(&stmt, &values).await?)
}

/// Runs the count query: prepared, its plan does not depend on the values, except over the
/// windows planned for their values (as their page is), where a value's total may be counted
/// from the events through a GIN index.
async fn total(sql: &ListSql, client: &mut deadpool_postgres::Client) -> Result<i64, StoreError> {
    let (values, types) = split(&sql.count_params());
    if !sql.prepared_list {
        let tx = client.transaction().await?;
        tx.batch_execute(PLANNED_FOR_VALUES).await?;
        let stmt = tx.prepare_typed(&sql.count, &types).await?;
        let total = tx.query_one(&stmt, &values).await?.try_get(0)?;
        tx.commit().await?;
        return Ok(total);
    }
    let stmt = client.prepare_typed_cached(&sql.count, &types).await?;
    Ok(client.query_one(&stmt, &values).await?.get(0))
}

/// What a transaction sets to plan its statements for their values, with bitmap scans (the GIN
/// indexes' only kind) and sequential scans allowed: the pool's sessions default to generic
/// plans without them ([`API_SESSION_SETTINGS`]).
const PLANNED_FOR_VALUES: &str = "SET LOCAL plan_cache_mode = force_custom_plan; \
     SET LOCAL enable_bitmapscan = on; SET LOCAL enable_seqscan = on";

/// Runs `statement` planned for these values ([`PLANNED_FOR_VALUES`]).
async fn planned_for_values(
    client: &mut deadpool_postgres::Client,
    statement: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Vec<Row>, StoreError> {
    let tx = client.transaction().await?;
    tx.batch_execute(PLANNED_FOR_VALUES).await?;
    let rows = tx.query_typed(statement, params).await?;
    tx.commit().await?;
    Ok(rows)
}
