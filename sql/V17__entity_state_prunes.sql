-- The consumers keep the state of the entities they read or wrote in memory, per partition,
-- and detect against it without reading `entity_state` (docs/architecture.md, "The state
-- cache"). Every write they make is a compare-and-set against the state they detected against,
-- so another writer's change is never overwritten; what a write cannot see is a row the
-- terminator pruned. The terminator therefore advances this sequence in every statement that
-- prunes state, and a consumer that sees it move forgets everything it remembers.
-- A sequence, not a row: nextval is visible at once, is never rolled back (a pruning statement
-- that fails costs the consumers only their memory) and never waits for a lock.
CREATE SEQUENCE entity_state_prunes;
