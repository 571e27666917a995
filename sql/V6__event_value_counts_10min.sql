-- Per-value counts also per ten minutes, like `event_counts` (kinds 10 and 11 of V4).
--
-- With per-minute counts only, the total of a one-hour `attribute_name` + `new_value` window
-- summed about 60 count rows for every event type and entity type of the value: the largest
-- part of such a list request's cost. Now its whole ten-minute spans read
-- `event_value_counts_10min`, and only the minutes outside them (at most 18) read the
-- per-minute rows of `event_value_counts`, as for the other totals.
--
-- A table of its own, so that `event_value_counts` keeps its meaning for the API of the
-- previous release during a rolling update. Maintained by the same statement-level trigger
-- function, replaced here, in the same transaction as the change to `events`; the keys of the
-- changed rows are computed once for both tables.

-- Keeps ingestion out while the functions are replaced and the ten-minute counts are filled
-- in: a row written in between would be counted by the old function only.
LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE event_value_counts_10min (
    attribute   text        NOT NULL,
    value       text        NOT NULL,
    bucket      timestamptz NOT NULL,   -- start of the ten minutes (UTC)
    event_type  text        NOT NULL,
    entity_type text        NOT NULL,
    n           bigint      NOT NULL,
    PRIMARY KEY (attribute, value, bucket, event_type, entity_type)
);

-- V5's function; the per-value counts go to both tables.
CREATE OR REPLACE FUNCTION event_counts_apply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    zero event_counts[];
    zero_values event_value_counts[];
    zero_values_10min event_value_counts_10min[];
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
        WITH minutes AS (
            SELECT k.attribute, k.value, k.bucket, k.event_type, k.entity_type, count(*) AS n
              FROM new_rows r,
                   LATERAL event_value_keys(r.event_time, r.event_type, r.entity_type,
                                            r.properties) k
             WHERE k.counted
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
        WITH minutes AS (
            SELECT k.attribute, k.value, k.bucket, k.event_type, k.entity_type, count(*) AS n
              FROM old_rows r,
                   LATERAL event_value_keys(r.event_time, r.event_type, r.entity_type,
                                            r.properties) k
             WHERE k.counted
             GROUP BY 1, 2, 3, 4, 5
        ), changed AS (
            UPDATE event_value_counts c SET n = c.n - g.n
              FROM minutes g
             WHERE c.attribute = g.attribute AND c.value = g.value
               AND c.bucket = g.bucket AND c.event_type = g.event_type
               AND c.entity_type = g.entity_type
            RETURNING c.attribute, c.value, c.bucket, c.event_type, c.entity_type, c.n
        ), changed_10min AS (
            UPDATE event_value_counts_10min c SET n = c.n - g.n
              FROM (SELECT m.attribute, m.value,
                           date_bin('10 minutes', m.bucket,
                                    TIMESTAMPTZ '2001-01-01 00:00:00+00') AS bucket,
                           m.event_type, m.entity_type, sum(m.n) AS n
                      FROM minutes m
                     GROUP BY 1, 2, 3, 4, 5) g
             WHERE c.attribute = g.attribute AND c.value = g.value
               AND c.bucket = g.bucket AND c.event_type = g.event_type
               AND c.entity_type = g.entity_type
            RETURNING c.attribute, c.value, c.bucket, c.event_type, c.entity_type, c.n
        )
        SELECT (SELECT array_agg(ROW(z.attribute, z.value, z.bucket, z.event_type,
                                     z.entity_type, z.n)::event_value_counts)
                  FROM changed z WHERE z.n = 0),
               (SELECT array_agg(ROW(z.attribute, z.value, z.bucket, z.event_type,
                                     z.entity_type, z.n)::event_value_counts_10min)
                  FROM changed_10min z WHERE z.n = 0)
          INTO zero_values, zero_values_10min;
        IF zero_values IS NOT NULL THEN
            DELETE FROM event_value_counts c
             USING unnest(zero_values) z
             WHERE c.attribute = z.attribute AND c.value = z.value
               AND c.bucket = z.bucket AND c.event_type = z.event_type
               AND c.entity_type = z.entity_type AND c.n = 0;
        END IF;
        IF zero_values_10min IS NOT NULL THEN
            DELETE FROM event_value_counts_10min c
             USING unnest(zero_values_10min) z
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
    TRUNCATE event_counts, event_value_counts, event_value_counts_10min;
    RETURN NULL;
END
$$;

-- The ten-minute counts of the events stored before this migration, from their minutes; in key
-- order, so that a total reads neighbouring rows from few pages.
INSERT INTO event_value_counts_10min (attribute, value, bucket, event_type, entity_type, n)
SELECT attribute, value,
       date_bin('10 minutes', bucket, TIMESTAMPTZ '2001-01-01 00:00:00+00'),
       event_type, entity_type, sum(n)
  FROM event_value_counts
 GROUP BY 1, 2, 3, 4, 5
 ORDER BY 1, 2, 3, 4, 5;
