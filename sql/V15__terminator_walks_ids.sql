-- The terminator walks the primary key instead of `(inserted_at, id)`: an event's id is a UUID v7
-- made when its row is written (src/store/mod.rs), so id order is insertion order to the
-- millisecond, and the age and count rules read it from the index every row has anyway
-- (src/store/retention.rs). Every stored event paid for this index and nothing else read it:
-- the write ceiling rose by 6-13 % without it (README "Performance").
--
-- `inserted_at` stays: `status` and the console show when a partition's last event was stored.
DROP INDEX IF EXISTS events_inserted_at_idx;
