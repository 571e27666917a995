//! Migrations: the schema from `sql/` (refinery) and the data migrations that need the
//! configuration, one replica at a time.

use super::{EventStore, StoreError};

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Advisory lock key serialising migrations across replicas.
const MIGRATION_LOCK: i64 = 0x4556_4D49_4752_4154; // "EVMIGRAT"

impl EventStore {
    /// Applies pending migrations from `sql/`, one replica at a time.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        let mut client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let client_ref: &mut tokio_postgres::Client = &mut client;
        let result = embedded::migrations::runner()
            .run_async(client_ref)
            .await
            .map_err(|e| StoreError::Migration(crate::error_report::describe(&e)));
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        let report = result?;
        Ok(report
            .applied_migrations()
            .iter()
            .map(|m| m.to_string())
            .collect())
    }

    /// Rewrites the ids of `FhircastSession` entities once (data migration
    /// `fhircast_session_ids`, after `sql/V9`): every id `rekey` maps is replaced in `events`,
    /// `entity_state` and `entities` in one transaction, one replica at a time. The number of
    /// ids rewritten, or `None` when it ran before.
    pub(crate) async fn rekey_fhircast_sessions(
        &self,
        rekey: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<Option<usize>, StoreError> {
        const NAME: &str = "fhircast_session_ids";
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        if tx
            .query_opt("SELECT 1 FROM data_migrations WHERE name = $1", &[&NAME])
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let ids = tx
            .query(
                "SELECT entity_id FROM entities WHERE entity_type = 'FhircastSession' \
                 UNION SELECT entity_id FROM entity_state WHERE entity_type = 'FhircastSession' \
                 UNION SELECT entity_id FROM events WHERE entity_type = 'FhircastSession'",
                &[],
            )
            .await?;
        let (old, new): (Vec<String>, Vec<String>) = ids
            .iter()
            .filter_map(|row| {
                let id: String = row.get(0);
                rekey(&id).map(|new| (id, new))
            })
            .unzip();
        for table in ["events", "entity_state", "entities"] {
            tx.execute(
                &format!(
                    "UPDATE {table} AS t SET entity_id = m.new \
                     FROM unnest($1::text[], $2::text[]) AS m(old, new) \
                     WHERE t.entity_type = 'FhircastSession' AND t.entity_id = m.old"
                ),
                &[&old, &new],
            )
            .await?;
        }
        tx.execute("INSERT INTO data_migrations (name) VALUES ($1)", &[&NAME])
            .await?;
        tx.commit().await?;
        Ok(Some(old.len()))
    }
}
