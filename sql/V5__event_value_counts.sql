-- Totals of `attribute_name` + `new_value` from counts, for the attributes a pipeline watches.
--
-- A list filtered on `properties @> {name: {new_value: value}}` can only match an attribute
-- whose value is an object with a string `new_value`. Such an occurrence is either
--   * counted here, per value and minute: the attribute is watched (it has an `old_value` key,
--     which change detection always writes) and its new value has at most 256 characters.
--     Watched attributes are statuses and context references: few values each, or values
--     that repeat over an entity's life;
--   * or counted in `event_counts` as kind 3 ("uncounted occurrence", per minute, attribute =
--     key): captured attributes such as identifiers, and long values. For a window holding
--     any of those for the filtered attribute the API counts the events row by row instead.
-- Non-string and missing new values can never equal a requested value and are not counted.
--
-- Maintained by the same statement-level trigger function as `event_counts` (V4), replaced
-- here, in the same transaction as the change to `events`.

-- Keeps ingestion out while the functions are replaced and the counts of the rows already
-- stored are filled in: a row written in between would be counted by the old function only.
LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE event_value_counts (
    attribute   text        NOT NULL,
    value       text        NOT NULL,
    bucket      timestamptz NOT NULL,   -- start of the minute (UTC)
    event_type  text        NOT NULL,
    entity_type text        NOT NULL,
    n           bigint      NOT NULL,
    PRIMARY KEY (attribute, value, bucket, event_type, entity_type)
);

-- The attributes of one event that a `new_value` filter could match, and whether each is
-- counted by value.
CREATE FUNCTION event_value_keys(t timestamptz, et text, nt text, props jsonb)
RETURNS TABLE (counted boolean, attribute text, value text, bucket timestamptz,
               event_type text, entity_type text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT a.value ? 'old_value' AND length(a.value ->> 'new_value') <= 256,
           a.key, a.value ->> 'new_value',
           date_bin('1 minute', t, TIMESTAMPTZ '2001-01-01 00:00:00+00'), et, nt
      FROM jsonb_each(CASE WHEN jsonb_typeof(props) = 'object' THEN props
                           ELSE '{}'::jsonb END) a
     WHERE jsonb_typeof(a.value) = 'object'
       AND jsonb_typeof(a.value -> 'new_value') = 'string'
$$;

-- V4's keys plus kind 3: the uncounted occurrences above, per minute.
CREATE OR REPLACE FUNCTION event_count_keys(t timestamptz, et text, nt text, props jsonb)
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
    UNION ALL
    SELECT 3::smallint, v.attribute, v.bucket, et, nt
      FROM event_value_keys(t, et, nt, props) v
     WHERE NOT v.counted
$$;

-- V4's function, now also adding and subtracting the per-value counts.
CREATE OR REPLACE FUNCTION event_counts_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    zero event_counts[];
    zero_values event_value_counts[];
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
        INSERT INTO event_value_counts AS c (attribute, value, bucket, event_type, entity_type, n)
        SELECT k.attribute, k.value, k.bucket, k.event_type, k.entity_type, count(*)
          FROM new_rows r,
               LATERAL event_value_keys(r.event_time, r.event_type, r.entity_type, r.properties) k
         WHERE k.counted
         GROUP BY 1, 2, 3, 4, 5
         ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (attribute, value, bucket, event_type, entity_type)
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
        WITH changed AS (
            UPDATE event_value_counts c SET n = c.n - g.n
              FROM (SELECT k.attribute, k.value, k.bucket, k.event_type, k.entity_type,
                           count(*) AS n
                      FROM old_rows r,
                           LATERAL event_value_keys(r.event_time, r.event_type, r.entity_type,
                                                    r.properties) k
                     WHERE k.counted
                     GROUP BY 1, 2, 3, 4, 5) g
             WHERE c.attribute = g.attribute AND c.value = g.value
               AND c.bucket = g.bucket AND c.event_type = g.event_type
               AND c.entity_type = g.entity_type
            RETURNING c.attribute, c.value, c.bucket, c.event_type, c.entity_type, c.n
        )
        SELECT array_agg(ROW(changed.attribute, changed.value, changed.bucket,
                             changed.event_type, changed.entity_type,
                             changed.n)::event_value_counts)
          INTO zero_values FROM changed WHERE changed.n = 0;
        IF zero_values IS NOT NULL THEN
            DELETE FROM event_value_counts c
             USING unnest(zero_values) z
             WHERE c.attribute = z.attribute AND c.value = z.value
               AND c.bucket = z.bucket AND c.event_type = z.event_type
               AND c.entity_type = z.entity_type AND c.n = 0;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION event_counts_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE event_counts, event_value_counts;
    RETURN NULL;
END
$$;

-- The events stored before this migration.
INSERT INTO event_counts (kind, attribute, bucket, event_type, entity_type, n)
SELECT 3, k.attribute, k.bucket, k.event_type, k.entity_type, count(*)
  FROM events r,
       LATERAL event_value_keys(r.event_time, r.event_type, r.entity_type, r.properties) k
 WHERE NOT k.counted
 GROUP BY 2, 3, 4, 5;
INSERT INTO event_value_counts (attribute, value, bucket, event_type, entity_type, n)
SELECT k.attribute, k.value, k.bucket, k.event_type, k.entity_type, count(*)
  FROM events r,
       LATERAL event_value_keys(r.event_time, r.event_type, r.entity_type, r.properties) k
 WHERE k.counted
 GROUP BY 1, 2, 3, 4, 5;
