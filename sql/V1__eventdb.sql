-- EventDB: detected status changes, the last known state of every watched attribute,
-- and the consumer offsets written in the same transaction as the events (exactly-once).

CREATE TABLE events (
    id               uuid        PRIMARY KEY,            -- UUID v7: time-ordered
    event_type       text        NOT NULL,
    entity_type      text        NOT NULL,
    entity_id        text        NOT NULL,
    properties       jsonb       NOT NULL,               -- {attr: {new_value, old_value}, captured: {new_value}}
    event_time       timestamptz NOT NULL,
    changed_by       text,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    source_seq       integer     NOT NULL,               -- n-th event of that message
    CONSTRAINT events_source_unique UNIQUE (source_topic, source_partition, source_offset, source_seq)
);

-- API: period filter with stable ordering, optionally by type.
CREATE INDEX events_event_time_idx ON events (event_time, id);
CREATE INDEX events_entity_type_time_idx ON events (entity_type, event_time, id);
CREATE INDEX events_event_type_time_idx ON events (event_type, event_time, id);
-- Terminator: age and count rules walk insertion order.
CREATE INDEX events_inserted_at_idx ON events (inserted_at, id);

CREATE TABLE entity_state (
    entity_type text        NOT NULL,
    entity_id   text        NOT NULL,
    attribute   text        NOT NULL,
    value       text,                                    -- NULL is a value (e.g. a closed context)
    version     bigint,
    event_time  timestamptz NOT NULL,
    deleted     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id, attribute)
);

CREATE INDEX entity_state_updated_at_idx ON entity_state (updated_at);

CREATE TABLE consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
