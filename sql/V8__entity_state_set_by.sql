-- The anchor a state value was set under: the FHIRcast open whose anchor resource
-- (`ResourceType/id`) set the context key, so that closing that anchor closes the keys its open
-- set and leaves the others. NULL for every other format and for values set before this
-- migration (a close then leaves them as they are, as before). A nullable column without a
-- default: adding it rewrites nothing.
ALTER TABLE entity_state ADD COLUMN set_by text;
