-- `event_counts_subtract` (V11) finds the count rows of deleted events with one range scan per
-- run of neighbouring keys instead of one B-tree descent per key.
--
-- A deleted batch's keys are dense: the terminator deletes in insertion order, so a batch's
-- events fill consecutive minutes, and per (kind, attribute) or (attribute, value) its keys are
-- nearly every count row of those minutes. V11 looked each key up alone (a descent of a
-- five-column key per count row: most of the terminator's database time per deleted event,
-- README "Performance"). Here the keys are grouped by that prefix and by ten minutes, and each
-- group's count rows from its first bucket to its last are read and locked by one index range
-- scan, in key order (groups sorted, ranges disjoint), so the terminator and ingestion still
-- lock count rows in the same order. A range can hold count rows that are not keys (other
-- types in the same minutes, minutes between two keys): they are locked with the others but
-- not changed; a group spans at most ten minutes of minute buckets or an hour of ten-minute ones. Same arguments, same
-- result, for the terminator's batches and for V11's delete trigger.
CREATE OR REPLACE FUNCTION event_counts_subtract(counts event_counts[], by_value event_value_counts[],
                                                 by_value_10min event_value_counts_10min[])
RETURNS void
LANGUAGE plpgsql
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
    gone tid[];
    kept tid[];
    kept_by bigint[];
BEGIN
    WITH keys AS MATERIALIZED (
        SELECT * FROM unnest(counts)
    ), runs AS MATERIALIZED (
        SELECT kind, attribute, min(bucket) AS lo, max(bucket) AS hi
          FROM keys
         GROUP BY kind, attribute,
                  date_bin(CASE WHEN kind >= 10 THEN interval '1 hour' ELSE interval '10 minutes' END,
                           bucket, TIMESTAMPTZ '2001-01-01 00:00:00+00')
    ), locked AS MATERIALIZED (
        SELECT c.*
          FROM (SELECT * FROM runs ORDER BY kind, attribute, lo) r,
               LATERAL (SELECT c.ctid, c.kind, c.attribute, c.bucket, c.event_type,
                               c.entity_type, c.n
                          FROM event_counts c
                         WHERE c.kind = r.kind AND c.attribute = r.attribute
                           AND c.bucket >= r.lo AND c.bucket <= r.hi
                           FOR UPDATE) c
    )
    SELECT array_agg(c.ctid) FILTER (WHERE c.n = g.n),
           array_agg(c.ctid) FILTER (WHERE c.n <> g.n),
           array_agg(g.n) FILTER (WHERE c.n <> g.n)
      INTO gone, kept, kept_by
      FROM locked c
      JOIN keys g
        ON c.kind = g.kind AND c.attribute = g.attribute AND c.bucket = g.bucket
       AND c.event_type = g.event_type AND c.entity_type = g.entity_type;
    DELETE FROM event_counts WHERE ctid = ANY(gone);
    UPDATE event_counts c SET n = c.n - k.n
      FROM unnest(kept, kept_by) k(tid, n)
     WHERE c.ctid = ANY(kept) AND c.ctid = k.tid;

    WITH keys AS MATERIALIZED (
        SELECT * FROM unnest(by_value)
    ), runs AS MATERIALIZED (
        SELECT attribute, value, min(bucket) AS lo, max(bucket) AS hi
          FROM keys
         GROUP BY attribute, value,
                  date_bin('10 minutes', bucket, TIMESTAMPTZ '2001-01-01 00:00:00+00')
    ), locked AS MATERIALIZED (
        SELECT c.*
          FROM (SELECT * FROM runs ORDER BY attribute, value, lo) r,
               LATERAL (SELECT c.ctid, c.attribute, c.value, c.bucket, c.event_type,
                               c.entity_type, c.n
                          FROM event_value_counts c
                         WHERE c.attribute = r.attribute AND c.value = r.value
                           AND c.bucket >= r.lo AND c.bucket <= r.hi
                           FOR UPDATE) c
    )
    SELECT array_agg(c.ctid) FILTER (WHERE c.n = g.n),
           array_agg(c.ctid) FILTER (WHERE c.n <> g.n),
           array_agg(g.n) FILTER (WHERE c.n <> g.n)
      INTO gone, kept, kept_by
      FROM locked c
      JOIN keys g
        ON c.attribute = g.attribute AND c.value = g.value AND c.bucket = g.bucket
       AND c.event_type = g.event_type AND c.entity_type = g.entity_type;
    DELETE FROM event_value_counts WHERE ctid = ANY(gone);
    UPDATE event_value_counts c SET n = c.n - k.n
      FROM unnest(kept, kept_by) k(tid, n)
     WHERE c.ctid = ANY(kept) AND c.ctid = k.tid;

    WITH keys AS MATERIALIZED (
        SELECT * FROM unnest(by_value_10min)
    ), runs AS MATERIALIZED (
        SELECT attribute, value, min(bucket) AS lo, max(bucket) AS hi
          FROM keys
         GROUP BY attribute, value,
                  date_bin('1 hour', bucket, TIMESTAMPTZ '2001-01-01 00:00:00+00')
    ), locked AS MATERIALIZED (
        SELECT c.*
          FROM (SELECT * FROM runs ORDER BY attribute, value, lo) r,
               LATERAL (SELECT c.ctid, c.attribute, c.value, c.bucket, c.event_type,
                               c.entity_type, c.n
                          FROM event_value_counts_10min c
                         WHERE c.attribute = r.attribute AND c.value = r.value
                           AND c.bucket >= r.lo AND c.bucket <= r.hi
                           FOR UPDATE) c
    )
    SELECT array_agg(c.ctid) FILTER (WHERE c.n = g.n),
           array_agg(c.ctid) FILTER (WHERE c.n <> g.n),
           array_agg(g.n) FILTER (WHERE c.n <> g.n)
      INTO gone, kept, kept_by
      FROM locked c
      JOIN keys g
        ON c.attribute = g.attribute AND c.value = g.value AND c.bucket = g.bucket
       AND c.event_type = g.event_type AND c.entity_type = g.entity_type;
    DELETE FROM event_value_counts_10min WHERE ctid = ANY(gone);
    UPDATE event_value_counts_10min c SET n = c.n - k.n
      FROM unnest(kept, kept_by) k(tid, n)
     WHERE c.ctid = ANY(kept) AND c.ctid = k.tid;
END
$$;
