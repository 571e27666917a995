-- The Kafka position of the message that last wrote each state row. A message read again at or
-- before that position on the same partition (a replay) is already applied: change detection
-- skips it instead of judging it against later state, where a different value at an equal
-- event time would look like a change. Rows written before this migration have no position and
-- are judged by time (or version) alone, as before. Nullable columns without a default: adding
-- them rewrites nothing.
ALTER TABLE entity_state
    ADD COLUMN source_topic     text,
    ADD COLUMN source_partition integer,
    ADD COLUMN source_offset    bigint;
