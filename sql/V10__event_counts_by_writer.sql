-- The counts of inserted events written by the writer that knows them, and a cheaper trigger
-- for every other writer.
--
-- V4–V6 count every inserted row in a statement-level trigger that calls two SQL set-returning
-- functions per row: about a third of PostgreSQL's time per stored event (README
-- "Performance"). The store's batch transaction now computes the same count keys from the events
-- it inserted, adds them up per batch and upserts them itself (src/store/counts.rs), after
-- `set_config('event_manager.counts_written', 'on', true)` in that transaction: the insert
-- trigger then does not fire. Any other insert (psql, a bulk COPY, a replica of the previous
-- release during a rolling update) is counted by the trigger as before, now in one pass over
-- the new rows (same keys as `event_count_keys` and `event_value_keys`, which stay for the
-- delete and update triggers). Deletes, updates and truncates are unchanged.

-- Keeps ingestion out while the insert trigger is replaced: a row written in between would be
-- counted by neither.
LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;

-- The count keys of V4 (kinds 0, 1, 10, 11 and 3) and V5/V6 (per value, per minute and per ten
-- minutes) of the new rows, added to the count tables in sorted key order like V6.
CREATE FUNCTION event_counts_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH r AS MATERIALIZED (
        SELECT event_type, entity_type,
               date_bin('1 minute', event_time, TIMESTAMPTZ '2001-01-01 00:00:00+00') AS minute,
               CASE WHEN jsonb_typeof(properties) = 'object' THEN properties
                    ELSE '{}'::jsonb END AS props
          FROM new_rows
    ), per_minute AS (
        SELECT 0::smallint AS kind, ''::text AS attribute, r.minute AS bucket,
               r.event_type, r.entity_type, count(*) AS n
          FROM r GROUP BY 3, 4, 5
        UNION ALL
        SELECT 1::smallint, k.key, r.minute, r.event_type, r.entity_type, count(*)
          FROM r, jsonb_object_keys(r.props) k(key) GROUP BY 2, 3, 4, 5
    ), counts AS (
        SELECT * FROM per_minute
        UNION ALL
        SELECT (m.kind + 10)::smallint, m.attribute,
               date_bin('10 minutes', m.bucket, TIMESTAMPTZ '2001-01-01 00:00:00+00'),
               m.event_type, m.entity_type, sum(m.n)::bigint
          FROM per_minute m GROUP BY 1, 2, 3, 4, 5
        UNION ALL
        SELECT 3::smallint, a.key, r.minute, r.event_type, r.entity_type, count(*)
          FROM r, jsonb_each(r.props) a
         WHERE jsonb_typeof(a.value) = 'object'
           AND jsonb_typeof(a.value -> 'new_value') = 'string'
           AND NOT (a.value ? 'old_value' AND length(a.value ->> 'new_value') <= 256)
         GROUP BY 2, 3, 4, 5
    )
    INSERT INTO event_counts AS c (kind, attribute, bucket, event_type, entity_type, n)
    SELECT * FROM counts ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (kind, attribute, bucket, event_type, entity_type)
    DO UPDATE SET n = c.n + excluded.n;

    WITH minutes AS (
        SELECT a.key AS attribute, a.value ->> 'new_value' AS value,
               date_bin('1 minute', r.event_time, TIMESTAMPTZ '2001-01-01 00:00:00+00') AS bucket,
               r.event_type, r.entity_type, count(*) AS n
          FROM new_rows r,
               jsonb_each(CASE WHEN jsonb_typeof(r.properties) = 'object' THEN r.properties
                               ELSE '{}'::jsonb END) a
         WHERE jsonb_typeof(a.value) = 'object'
           AND jsonb_typeof(a.value -> 'new_value') = 'string'
           AND a.value ? 'old_value' AND length(a.value ->> 'new_value') <= 256
         GROUP BY 1, 2, 3, 4, 5
    ), by_minute AS (
        INSERT INTO event_value_counts AS c
               (attribute, value, bucket, event_type, entity_type, n)
        SELECT * FROM minutes ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (attribute, value, bucket, event_type, entity_type)
        DO UPDATE SET n = c.n + excluded.n
    )
    INSERT INTO event_value_counts_10min AS c
           (attribute, value, bucket, event_type, entity_type, n)
    SELECT m.attribute, m.value,
           date_bin('10 minutes', m.bucket, TIMESTAMPTZ '2001-01-01 00:00:00+00'),
           m.event_type, m.entity_type, sum(m.n)
      FROM minutes m
     GROUP BY 1, 2, 3, 4, 5
     ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (attribute, value, bucket, event_type, entity_type)
    DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

DROP TRIGGER events_count_insert ON events;
CREATE TRIGGER events_count_insert AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    WHEN (current_setting('event_manager.counts_written', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION event_counts_insert();
