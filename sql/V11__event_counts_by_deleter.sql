-- The counts of deleted events subtracted by the deleter that knows them, and a cheaper trigger
-- for every other deleter.
--
-- V4–V6 subtract every deleted row's counts in a statement-level trigger that calls two SQL
-- set-returning functions per row and joins the aggregated keys with the count tables, a join
-- planned without statistics (seq scans of the whole count tables), and the statement's
-- estimated cost put it through JIT compilation on every call: most of the terminator's time per
-- deleted event (README "Performance"). The terminator's batch statement now adds up the keys of
-- the rows it deleted itself (src/store/retention.rs) and subtracts them with
-- `event_counts_subtract`, after `set_config('event_manager.counts_written', 'on', true)` in its
-- transaction: the delete trigger then does not fire, as the insert trigger of V10 does not for
-- the store's batches. Any other delete (psql, a replica of the previous release during a
-- rolling update) is counted by the trigger as before, now in one pass over the old rows and
-- through the same function. Updates and truncates are unchanged.

-- Keeps deleters out while the delete trigger is replaced: a row deleted in between would be
-- subtracted by neither.
LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;

-- Subtracts counts (each `n` the number of deleted occurrences of its key) from the three count
-- tables. Every key of a deleted row has a count row. Each table's rows are first locked in
-- sorted key order, the order in which the store's batches and the insert trigger upsert them,
-- so that a deleter and concurrent ingestion never wait for each other in a circle; with the
-- locks held, rows whose count reaches zero are deleted and the others decremented. The tables
-- go in the store's order too. Rows are found by key and then by position (ctid), never by a
-- scan of a whole count table, which is what a join of thousands of keys otherwise plans.
CREATE FUNCTION event_counts_subtract(counts event_counts[], by_value event_value_counts[],
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
    SELECT array_agg(c.ctid) FILTER (WHERE c.n = g.n),
           array_agg(c.ctid) FILTER (WHERE c.n <> g.n),
           array_agg(g.n) FILTER (WHERE c.n <> g.n)
      INTO gone, kept, kept_by
      FROM (SELECT * FROM unnest(counts) ORDER BY 1, 2, 3, 4, 5) g,
           LATERAL (SELECT c.ctid, c.n FROM event_counts c
                     WHERE c.kind = g.kind AND c.attribute = g.attribute
                       AND c.bucket = g.bucket AND c.event_type = g.event_type
                       AND c.entity_type = g.entity_type
                       FOR UPDATE) c;
    DELETE FROM event_counts WHERE ctid = ANY(gone);
    UPDATE event_counts c SET n = c.n - k.n
      FROM unnest(kept, kept_by) k(tid, n)
     WHERE c.ctid = ANY(kept) AND c.ctid = k.tid;

    SELECT array_agg(c.ctid) FILTER (WHERE c.n = g.n),
           array_agg(c.ctid) FILTER (WHERE c.n <> g.n),
           array_agg(g.n) FILTER (WHERE c.n <> g.n)
      INTO gone, kept, kept_by
      FROM (SELECT * FROM unnest(by_value) ORDER BY 1, 2, 3, 4, 5) g,
           LATERAL (SELECT c.ctid, c.n FROM event_value_counts c
                     WHERE c.attribute = g.attribute AND c.value = g.value
                       AND c.bucket = g.bucket AND c.event_type = g.event_type
                       AND c.entity_type = g.entity_type
                       FOR UPDATE) c;
    DELETE FROM event_value_counts WHERE ctid = ANY(gone);
    UPDATE event_value_counts c SET n = c.n - k.n
      FROM unnest(kept, kept_by) k(tid, n)
     WHERE c.ctid = ANY(kept) AND c.ctid = k.tid;

    SELECT array_agg(c.ctid) FILTER (WHERE c.n = g.n),
           array_agg(c.ctid) FILTER (WHERE c.n <> g.n),
           array_agg(g.n) FILTER (WHERE c.n <> g.n)
      INTO gone, kept, kept_by
      FROM (SELECT * FROM unnest(by_value_10min) ORDER BY 1, 2, 3, 4, 5) g,
           LATERAL (SELECT c.ctid, c.n FROM event_value_counts_10min c
                     WHERE c.attribute = g.attribute AND c.value = g.value
                       AND c.bucket = g.bucket AND c.event_type = g.event_type
                       AND c.entity_type = g.entity_type
                       FOR UPDATE) c;
    DELETE FROM event_value_counts_10min WHERE ctid = ANY(gone);
    UPDATE event_value_counts_10min c SET n = c.n - k.n
      FROM unnest(kept, kept_by) k(tid, n)
     WHERE c.ctid = ANY(kept) AND c.ctid = k.tid;
END
$$;

-- The count keys of V4 (kinds 0, 1, 10, 11 and 3) and V5/V6 (per value, per minute and per ten
-- minutes) of the old rows, in one pass (the same keys as `event_count_keys` and
-- `event_value_keys`, which stay for the update trigger), subtracted. The terminator's batch
-- statement (src/store/retention.rs) adds up the same keys from the rows it deleted.
CREATE FUNCTION event_counts_delete() RETURNS trigger
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    counts event_counts[];
    by_value event_value_counts[];
    by_value_10min event_value_counts_10min[];
BEGIN
    WITH r AS MATERIALIZED (
        SELECT event_type, entity_type,
               date_bin('1 minute', event_time, TIMESTAMPTZ '2001-01-01 00:00:00+00') AS minute,
               CASE WHEN jsonb_typeof(properties) = 'object' THEN properties
                    ELSE '{}'::jsonb END AS props
          FROM old_rows
    ), a AS MATERIALIZED (
        -- Each top-level attribute; `counted`: counted by value (true), an uncounted occurrence
        -- of kind 3 (false), or neither (null).
        SELECT r.minute, r.event_type, r.entity_type, e.key, e.value,
               CASE WHEN jsonb_typeof(e.value) = 'object'
                     AND jsonb_typeof(e.value -> 'new_value') = 'string'
                    THEN e.value ? 'old_value' AND length(e.value ->> 'new_value') <= 256
               END AS counted
          FROM r, jsonb_each(r.props) e
    ), per_minute AS (
        SELECT 0::smallint AS kind, ''::text AS attribute, r.minute AS bucket,
               r.event_type, r.entity_type, count(*) AS n
          FROM r GROUP BY 3, 4, 5
        UNION ALL
        SELECT 1::smallint, a.key, a.minute, a.event_type, a.entity_type, count(*)
          FROM a GROUP BY 2, 3, 4, 5
    ), keys AS (
        SELECT * FROM per_minute
        UNION ALL
        SELECT (m.kind + 10)::smallint, m.attribute,
               date_bin('10 minutes', m.bucket, TIMESTAMPTZ '2001-01-01 00:00:00+00'),
               m.event_type, m.entity_type, sum(m.n)::bigint
          FROM per_minute m GROUP BY 1, 2, 3, 4, 5
        UNION ALL
        SELECT 3::smallint, a.key, a.minute, a.event_type, a.entity_type, count(*)
          FROM a WHERE NOT a.counted GROUP BY 2, 3, 4, 5
    ), minutes AS (
        SELECT a.key AS attribute, a.value ->> 'new_value' AS value, a.minute AS bucket,
               a.event_type, a.entity_type, count(*) AS n
          FROM a WHERE a.counted GROUP BY 1, 2, 3, 4, 5
    ), tens AS (
        SELECT m.attribute, m.value,
               date_bin('10 minutes', m.bucket, TIMESTAMPTZ '2001-01-01 00:00:00+00') AS bucket,
               m.event_type, m.entity_type, sum(m.n)::bigint AS n
          FROM minutes m GROUP BY 1, 2, 3, 4, 5
    )
    SELECT ARRAY(SELECT ROW(k.*)::event_counts FROM keys k),
           ARRAY(SELECT ROW(m.*)::event_value_counts FROM minutes m),
           ARRAY(SELECT ROW(t.*)::event_value_counts_10min FROM tens t)
      INTO counts, by_value, by_value_10min;
    PERFORM event_counts_subtract(counts, by_value, by_value_10min);
    RETURN NULL;
END
$$;

DROP TRIGGER events_count_delete ON events;
CREATE TRIGGER events_count_delete AFTER DELETE ON events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT
    WHEN (current_setting('event_manager.counts_written', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION event_counts_delete();
