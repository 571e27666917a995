//! `GET /api/status`: the consumer group's position per topic partition — stored, committed,
//! log start and end, lag, last event — as `event-manager status` reads it (`ops::status`).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::OnceCell;
use utoipa::ToSchema;

use super::ConsoleState;
use crate::api::error::{ApiError, ErrorBody};
use crate::kafka::KafkaConfig;
use crate::ops::status::{GroupStatus, PartitionStatus, StatusReader};
use crate::ops::OpsError;
use crate::store::EventStore;

/// The status reader of this process's group, made on first use and kept, so that its Kafka
/// client is reused by every refresh.
pub(super) struct StatusSource {
    store: EventStore,
    kafka: KafkaConfig,
    reader: OnceCell<StatusReader>,
}

impl StatusSource {
    pub(super) fn new(store: EventStore, kafka: &KafkaConfig) -> Self {
        Self {
            store,
            kafka: kafka.clone(),
            reader: OnceCell::new(),
        }
    }

    async fn read(&self) -> Result<GroupStatus, OpsError> {
        let reader = self
            .reader
            .get_or_try_init(|| async {
                StatusReader::new(&self.kafka, self.store.clone(), &self.kafka.group_id)
            })
            .await?;
        reader.read().await
    }
}

/// `GET /api/status` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct StatusView {
    /// The consumer group (`kafka.group_id`).
    pub group: String,
    /// When the figures were read.
    pub read_at: DateTime<Utc>,
    /// One entry per topic partition the group has stored positions for, by topic and
    /// partition; empty while the group has stored none.
    pub partitions: Vec<PartitionView>,
    /// Sums over the partitions.
    pub total: StatusTotalView,
}

/// One topic partition of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PartitionView {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset stored in the EventDB, with the events (the group's true position).
    pub stored_offset: Option<i64>,
    /// When the stored position last moved.
    pub stored_at: Option<DateTime<Utc>>,
    /// The next offset committed to Kafka for the group (what lag tools read).
    pub committed_offset: Option<i64>,
    /// The first offset the broker retains.
    pub log_start: Option<i64>,
    /// The offset the next message will get.
    pub log_end: Option<i64>,
    /// Messages between the stored position (or the log start) and the log end.
    pub lag: Option<i64>,
    /// `event_time` of the event stored last from the partition.
    pub last_event_time: Option<DateTime<Utc>>,
}

/// The total line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct StatusTotalView {
    /// Number of partitions.
    pub partitions: usize,
    /// Partitions with a lag.
    pub lagging_partitions: usize,
    /// Sum of the lags.
    pub lag: i64,
    /// Sum of the stored offsets: messages the group has accounted for.
    pub stored: i64,
    /// Sum of the log end offsets.
    pub log_end: i64,
    /// The newest `last_event_time`.
    pub last_event_time: Option<DateTime<Utc>>,
}

impl From<PartitionStatus> for PartitionView {
    fn from(p: PartitionStatus) -> Self {
        Self {
            topic: p.topic,
            partition: p.partition,
            stored_offset: p.stored_offset,
            stored_at: p.stored_at,
            committed_offset: p.committed_offset,
            log_start: p.log_start,
            log_end: p.log_end,
            lag: p.lag,
            last_event_time: p.last_event_time,
        }
    }
}

impl From<GroupStatus> for StatusView {
    fn from(s: GroupStatus) -> Self {
        let total = StatusTotalView {
            partitions: s.total.partitions,
            lagging_partitions: s.total.lagging_partitions,
            lag: s.total.lag,
            stored: s.partitions.iter().filter_map(|p| p.stored_offset).sum(),
            log_end: s.partitions.iter().filter_map(|p| p.log_end).sum(),
            last_event_time: s.total.last_event_time,
        };
        Self {
            group: s.group,
            read_at: s.read_at,
            partitions: s.partitions.into_iter().map(PartitionView::from).collect(),
            total,
        }
    }
}

/// The consumer group's lag per topic partition.
#[utoipa::path(
    get,
    path = "/api/status",
    tag = "console",
    responses(
        (status = 200, description = "The group's position on each partition.", body = StatusView),
        (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
        (status = 403, description = "The token lacks `event:read`.", body = ErrorBody),
        (status = 503, description = "Kafka or the event database cannot be reached.", body = ErrorBody),
    ),
    security(("bearer" = ["event:read"]))
)]
pub async fn status(State(state): State<ConsoleState>) -> Result<Json<StatusView>, ApiError> {
    match state.status.read().await {
        Ok(status) => Ok(Json(status.into())),
        Err(OpsError::UnknownGroup { group, .. }) => Ok(Json(StatusView {
            group,
            read_at: Utc::now(),
            partitions: Vec::new(),
            total: StatusTotalView {
                partitions: 0,
                lagging_partitions: 0,
                lag: 0,
                stored: 0,
                log_end: 0,
                last_event_time: None,
            },
        })),
        Err(e) => Err(ops_error(e)),
    }
}

/// An operations question that could not be answered: the EventDB's errors as the events API
/// maps them, Kafka's as 503 naming the cause.
pub(super) fn ops_error(error: OpsError) -> ApiError {
    match error {
        OpsError::Store(e) => e.into(),
        e => {
            tracing::warn!(error = %e, "console: cannot read from Kafka");
            ApiError::KafkaUnavailable(e.to_string())
        }
    }
}
