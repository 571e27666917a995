-- API filters on properties. Every list query also has an event_time range, served by the
-- B-tree indexes of V1; these indexes serve the attribute filters when they are the more
-- selective part (rare attributes or values across a long period).

-- The top-level attribute names of an event, for `attribute_name` alone:
--   event_property_keys(properties) @> ARRAY['status']
-- Non-objects yield no keys instead of an error, so an odd row can never fail an insert.
CREATE FUNCTION event_property_keys(p jsonb) RETURNS text[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT CASE WHEN jsonb_typeof(p) = 'object'
                      THEN ARRAY(SELECT jsonb_object_keys(p))
                      ELSE '{}'::text[] END $$;

CREATE INDEX events_property_keys_idx ON events USING gin (event_property_keys(properties));

-- `attribute_name` + `new_value`: properties @> '{"status": {"new_value": "APPROVED"}}'.
-- jsonb_path_ops hashes the whole path, so the lookup is exact and the index small.
CREATE INDEX events_properties_path_idx ON events USING gin (properties jsonb_path_ops);
