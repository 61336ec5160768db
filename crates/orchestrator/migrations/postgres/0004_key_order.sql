-- Per-key order is commit order. The outbox write takes each ordering key's row lock (an
-- upsert of keel_keys) and numbers the key's commands from the row's counter; the lock is
-- held until the transaction ends, so a transaction that commits later numbers its commands
-- later. Claims take a key's commands in that order (key_seq).
ALTER TABLE keel_keys ADD COLUMN next_seq BIGINT NOT NULL DEFAULT 0;
-- When a command last used the key: only keys idle for a while are purged, so a purge never
-- races with a producer numbering the key's next commands.
ALTER TABLE keel_keys ADD COLUMN last_used TIMESTAMPTZ NOT NULL DEFAULT now();
ALTER TABLE keel_events ADD COLUMN key_seq BIGINT;
ALTER TABLE keel_deliveries ADD COLUMN key_seq BIGINT;
DROP INDEX keel_deliveries_keyed;
CREATE INDEX keel_deliveries_keyed ON keel_deliveries (ordering_key, key_seq, event_id)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;
