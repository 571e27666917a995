//! What the operator console asks the EventDB beyond the events API: the event types, entity
//! types and attributes seen recently, offered as filter suggestions. Read from the count table
//! (`sql/V4__event_counts.sql`), never from `events`, so the cost does not grow with them.

use chrono::{DateTime, Utc};

use super::{EventStore, StoreError};

/// Most values of each kind returned.
pub(crate) const FACET_LIMIT: i64 = 200;

/// Values seen in events since a moment, each list sorted and at most [`FACET_LIMIT`] long.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facets {
    /// Event types.
    pub event_types: Vec<String>,
    /// Entity types.
    pub entity_types: Vec<String>,
    /// Top-level property names.
    pub attributes: Vec<String>,
}

impl EventStore {
    /// The event types, entity types and attributes of events whose `event_time` falls at or
    /// after the 10-minute span holding `since`, leaving out events of `hidden_event_types`.
    pub(crate) async fn recent_facets(
        &self,
        since: DateTime<Utc>,
        hidden_event_types: &[String],
    ) -> Result<Facets, StoreError> {
        let client = self.api_client().await?;
        // Kind 10 rows count events per 10 minutes (attribute ''), kind 11 per attribute.
        let types = client
            .prepare_cached(
                "SELECT DISTINCT event_type, entity_type FROM event_counts \
                 WHERE kind = 10 AND attribute = '' \
                   AND bucket >= date_bin('10 minutes', $1::timestamptz, \
                                          TIMESTAMPTZ '2001-01-01 00:00:00+00') \
                   AND event_type <> ALL($2::text[])",
            )
            .await?;
        // Attribute names by a loose index scan over the primary key (one probe per name),
        // each kept when it has a count row in the window.
        let attributes = client
            .prepare_cached(
                "WITH RECURSIVE names(attribute) AS ( \
                   SELECT min(attribute) FROM event_counts WHERE kind = 11 \
                   UNION ALL \
                   SELECT (SELECT min(c.attribute) FROM event_counts c \
                            WHERE c.kind = 11 AND c.attribute > names.attribute) \
                     FROM names WHERE names.attribute IS NOT NULL) \
                 SELECT attribute FROM names n \
                 WHERE n.attribute IS NOT NULL AND EXISTS ( \
                   SELECT 1 FROM event_counts c \
                    WHERE c.kind = 11 AND c.attribute = n.attribute \
                      AND c.bucket >= date_bin('10 minutes', $1::timestamptz, \
                                               TIMESTAMPTZ '2001-01-01 00:00:00+00') \
                      AND c.event_type <> ALL($2::text[])) \
                 ORDER BY attribute LIMIT $3",
            )
            .await?;
        let type_rows = client.query(&types, &[&since, &hidden_event_types]).await?;
        let attribute_rows = client
            .query(&attributes, &[&since, &hidden_event_types, &FACET_LIMIT])
            .await?;
        let mut event_types = std::collections::BTreeSet::new();
        let mut entity_types = std::collections::BTreeSet::new();
        for row in &type_rows {
            event_types.insert(row.try_get::<_, String>(0)?);
            entity_types.insert(row.try_get::<_, String>(1)?);
        }
        let limit = FACET_LIMIT as usize;
        Ok(Facets {
            event_types: event_types.into_iter().take(limit).collect(),
            entity_types: entity_types.into_iter().take(limit).collect(),
            attributes: attribute_rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?,
        })
    }
}
