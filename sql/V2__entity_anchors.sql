-- One row per known entity: the anchor a batch transaction locks (row lock, FOR UPDATE) before
-- it reads and changes the entity's state, so that the same entity arriving through several
-- consumers at once is serialised. Row locks, unlike advisory locks, do not use the shared lock
-- table, so batches of any size are safe.
CREATE TABLE entities (
    entity_type   text        NOT NULL,
    entity_id     text        NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id)
);

INSERT INTO entities (entity_type, entity_id)
SELECT DISTINCT entity_type, entity_id FROM entity_state
ON CONFLICT DO NOTHING;
