-- API filters on properties. Every list query also has an event_time range, served by the
-- B-tree indexes of V1; these indexes serve the attribute filters when they are the more
-- selective part (rare attributes or values across a long period). Both are GIN: when the
-- planner prefers the time range instead, the row checks (`?`, `@>`) stay cheap.

-- `attribute_name` alone: properties ? 'employee_id' (jsonb_ops indexes every key).
CREATE INDEX events_properties_keys_idx ON events USING gin (properties jsonb_ops);

-- `attribute_name` + `new_value`: properties @> '{"status": {"new_value": "APPROVED"}}'.
-- jsonb_path_ops hashes the whole path to the value, so the lookup is exact and the index small.
CREATE INDEX events_properties_path_idx ON events USING gin (properties jsonb_path_ops);
