-- Data migrations that need the service's configuration, which SQL cannot see: each runs once,
-- inside the binary, after the schema migrations, and is recorded here in the same transaction.
--
-- `fhircast_session_ids`: FHIRcast entity ids were `<hub.topic>/<key>`, and the topic is the
-- session's secret. The binary rewrites them to `<session>/<key>` (the subscription's name, else
-- a keyed hash of the topic) in `events`, `entity_state` and `entities` (docs/architecture.md,
-- "FHIRcast session ids").
CREATE TABLE data_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Nothing to rewrite in a database without FHIRcast entities (every stored entity has its
-- `entities` row): recorded as done here, so that the binary never reads `events` for it.
INSERT INTO data_migrations (name)
SELECT 'fhircast_session_ids'
 WHERE NOT EXISTS (SELECT 1 FROM entities WHERE entity_type = 'FhircastSession');
