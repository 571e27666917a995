-- Counts of events per 10 minutes and per minute, so that the API's `total_entries` is a sum
-- over a few rows per filter combination instead of a count over every event of the window:
-- the window's whole 10-minute spans, then its remaining whole minutes, plus exact counts of
-- the partial minutes at its two ends.
--
-- kind 0: events                              attribute = ''
-- kind 1: events having top-level key         attribute = key
-- kinds 0 and 1 count per minute (bucket = the minute's start); kinds 10 and 11 count the same
-- per 10 minutes (bucket = the start of the 10 minutes).
--
-- There are no counts per attribute value: values such as identifiers are often unique per
-- event, which would make this table as large as `events` and every insert and delete touch
-- two more rows. Totals of `attribute_name` + `new_value` are counted from the events.
--
-- Maintained by statement-level triggers in the same transaction as the change to `events`, so
-- every snapshot sees counts that agree with the rows. Requires PostgreSQL 14 (date_bin).

CREATE TABLE event_counts (
    kind        smallint    NOT NULL,
    attribute   text        NOT NULL,
    bucket      timestamptz NOT NULL,   -- start of the minute or 10 minutes (UTC)
    event_type  text        NOT NULL,
    entity_type text        NOT NULL,
    n           bigint      NOT NULL,
    PRIMARY KEY (kind, attribute, bucket, event_type, entity_type)
);

-- The count keys of one event.
CREATE FUNCTION event_count_keys(t timestamptz, et text, nt text, props jsonb)
RETURNS TABLE (kind smallint, attribute text, bucket timestamptz,
               event_type text, entity_type text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH b(level, bucket) AS (VALUES
             (0::smallint, date_bin('1 minute', t, TIMESTAMPTZ '2001-01-01 00:00:00+00')),
             (10::smallint, date_bin('10 minutes', t, TIMESTAMPTZ '2001-01-01 00:00:00+00'))),
         p AS (SELECT CASE WHEN jsonb_typeof(props) = 'object' THEN props
                           ELSE '{}'::jsonb END AS props)
    SELECT b.level, ''::text, b.bucket, et, nt FROM b
    UNION ALL
    SELECT (b.level + 1)::smallint, k.key, b.bucket, et, nt
      FROM b, p, jsonb_object_keys(p.props) k(key)
$$;

-- Adds the rows of the new transition table, subtracts those of the old one. Added keys are
-- upserted in sorted order, so concurrent writers lock count rows in the same order; rows
-- that reach zero are removed.
CREATE FUNCTION event_counts_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    zero event_counts[];
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO event_counts AS c (kind, attribute, bucket, event_type, entity_type, n)
        SELECT k.kind, k.attribute, k.bucket, k.event_type, k.entity_type, count(*)
          FROM new_rows r,
               LATERAL event_count_keys(r.event_time, r.event_type, r.entity_type, r.properties) k
         GROUP BY 1, 2, 3, 4, 5
         ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (kind, attribute, bucket, event_type, entity_type)
        DO UPDATE SET n = c.n + excluded.n;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        -- Every key of a deleted row has a count row; those that reach zero go.
        WITH changed AS (
            UPDATE event_counts c SET n = c.n - g.n
              FROM (SELECT k.kind, k.attribute, k.bucket, k.event_type, k.entity_type,
                           count(*) AS n
                      FROM old_rows r,
                           LATERAL event_count_keys(r.event_time, r.event_type, r.entity_type,
                                                    r.properties) k
                     GROUP BY 1, 2, 3, 4, 5) g
             WHERE c.kind = g.kind AND c.attribute = g.attribute
               AND c.bucket = g.bucket AND c.event_type = g.event_type
               AND c.entity_type = g.entity_type
            RETURNING c.kind, c.attribute, c.bucket, c.event_type, c.entity_type, c.n
        )
        SELECT array_agg(ROW(changed.kind, changed.attribute, changed.bucket,
                             changed.event_type, changed.entity_type, changed.n)::event_counts)
          INTO zero FROM changed WHERE changed.n = 0;
        IF zero IS NOT NULL THEN
            DELETE FROM event_counts c
             USING unnest(zero) z
             WHERE c.kind = z.kind AND c.attribute = z.attribute
               AND c.bucket = z.bucket AND c.event_type = z.event_type
               AND c.entity_type = z.entity_type AND c.n = 0;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION event_counts_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE event_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_count_insert AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_counts_apply();
CREATE TRIGGER events_count_delete AFTER DELETE ON events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_counts_apply();
CREATE TRIGGER events_count_update AFTER UPDATE ON events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_counts_apply();
CREATE TRIGGER events_count_truncate AFTER TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION event_counts_truncate();

-- The events stored before this migration.
INSERT INTO event_counts (kind, attribute, bucket, event_type, entity_type, n)
SELECT k.kind, k.attribute, k.bucket, k.event_type, k.entity_type, count(*)
  FROM events r,
       LATERAL event_count_keys(r.event_time, r.event_type, r.entity_type, r.properties) k
 GROUP BY 1, 2, 3, 4, 5;
