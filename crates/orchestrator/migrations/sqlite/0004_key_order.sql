-- Per-key order is commit order (see the PostgreSQL migration; SQLite has one writer, so
-- numbering a key's commands in the writing transaction is commit order).
ALTER TABLE keel_keys ADD COLUMN next_seq INTEGER NOT NULL DEFAULT 0;
-- When a command last used the key (ms, SQLite's clock; every insert sets it): only keys
-- idle for a while are purged.
ALTER TABLE keel_keys ADD COLUMN last_used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keel_events ADD COLUMN key_seq INTEGER;
ALTER TABLE keel_deliveries ADD COLUMN key_seq INTEGER;
DROP INDEX keel_deliveries_keyed;
CREATE INDEX keel_deliveries_keyed ON keel_deliveries (ordering_key, key_seq, event_id)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;
