-- The GIN index on `properties` is built only where it can be used: lists read their window
-- through the time-range B-tree and check attribute filters row by row for every window up to
-- 24 hours (src/store/event_queries/list.rs), and the default longest window is one hour
-- (`api.events_list_max_period_hours`), so with the default configuration nothing ever read it,
-- while every stored event paid for it (the write ceiling rose by about a sixth without it:
-- README "Performance"). Where the configuration allows windows over 24 hours, `run` builds it
-- again at start-up, in the background and one replica at a time (CREATE INDEX CONCURRENTLY,
-- src/store/attribute_indexes.rs), with the same name and definition as V3's.
DROP INDEX IF EXISTS events_properties_keys_idx;
