//! `GET /api/dead-letters`: the dead letters of the last hour on every dead-letter topic of
//! the topic rules — counts by reason and the latest ones, never their bodies (`ops::dlq`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::status::ops_error;
use super::ConsoleState;
use crate::api::error::{ApiError, ErrorBody};
use crate::ops::dlq::{self, DeadLetterFilter, DeadLetterSummary};
use crate::ops::OpsError;

/// How far back the counts reach.
pub const WINDOW: TimeDelta = TimeDelta::hours(1);
/// How many of the latest dead letters are listed.
pub(crate) const LATEST: usize = 20;

/// `GET /api/dead-letters` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeadLetterReport {
    /// Dead letters from this time on are counted.
    pub since: DateTime<Utc>,
    /// The dead-letter topics read (those of the topic rules that exist on the broker).
    pub topics: Vec<String>,
    /// Dead letters in the window.
    pub total: u64,
    /// Their counts by reason code, largest first.
    pub by_reason: Vec<ReasonCount>,
    /// The latest dead letters of the window, newest first (at most 20), without bodies.
    pub latest: Vec<DeadLetterView>,
}

/// How many dead letters had one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReasonCount {
    /// Reason code (`missing_field`, `invalid_encoding`, …; `(none)` without the header).
    pub reason: String,
    /// Dead letters with it.
    pub count: u64,
}

/// One dead letter, without its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// The dead-letter topic.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// When it was dead-lettered.
    pub timestamp: Option<DateTime<Utc>>,
    /// The topic it was read from.
    pub source_topic: Option<String>,
    /// The partition it was read from.
    pub source_partition: Option<i32>,
    /// Its offset there.
    pub source_offset: Option<i64>,
    /// Reason code.
    pub reason: Option<String>,
    /// What the decoder said.
    pub detail: Option<String>,
}

impl DeadLetterView {
    fn new(topic: &str, d: DeadLetterSummary) -> Self {
        Self {
            topic: topic.to_owned(),
            partition: d.partition,
            offset: d.offset,
            timestamp: d.time,
            source_topic: d.source_topic,
            source_partition: d.source_partition,
            source_offset: d.source_offset,
            reason: d.reason,
            detail: d.detail,
        }
    }
}

/// Dead letters of the last hour: counts by reason and the latest ones.
#[utoipa::path(
    get,
    path = "/api/dead-letters",
    tag = "console",
    responses(
        (status = 200, description = "Dead letters of the last hour.", body = DeadLetterReport),
        (status = 401, description = "Missing or invalid bearer token.", body = ErrorBody),
        (status = 403, description = "The token lacks `event:read`.", body = ErrorBody),
        (status = 503, description = "Kafka cannot be reached.", body = ErrorBody),
    ),
    security(("bearer" = ["event:read"]))
)]
pub async fn dead_letters(
    State(state): State<ConsoleState>,
) -> Result<Json<DeadLetterReport>, ApiError> {
    let since = Utc::now() - WINDOW;
    let filter = DeadLetterFilter {
        since: Some(since),
        limit: Some(LATEST),
        ..DeadLetterFilter::default()
    };
    let lists = futures::future::join_all(
        state
            .dead_letter_topics
            .iter()
            .map(|topic| dlq::list(&state.kafka, topic, &filter)),
    )
    .await;
    let mut topics = Vec::new();
    let mut total = 0;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut latest = Vec::new();
    for (topic, list) in state.dead_letter_topics.iter().zip(lists) {
        let list = match list {
            Ok(list) => list,
            // A dead-letter topic is created by its first dead letter unless made in advance.
            Err(OpsError::UnknownTopic(_)) => continue,
            Err(e) => return Err(ops_error(e)),
        };
        topics.push(topic.clone());
        total += list.matched;
        for (reason, n) in list.by_reason {
            *reasons.entry(reason).or_default() += n;
        }
        latest.extend(
            list.letters
                .into_iter()
                .map(|d| DeadLetterView::new(topic, d)),
        );
    }
    latest.sort_by(|a, b| {
        (b.timestamp, &b.topic, b.partition, b.offset).cmp(&(
            a.timestamp,
            &a.topic,
            a.partition,
            a.offset,
        ))
    });
    latest.truncate(LATEST);
    let mut by_reason: Vec<ReasonCount> = reasons
        .into_iter()
        .map(|(reason, count)| ReasonCount { reason, count })
        .collect();
    by_reason.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    Ok(Json(DeadLetterReport {
        since,
        topics,
        total,
        by_reason,
        latest,
    }))
}
