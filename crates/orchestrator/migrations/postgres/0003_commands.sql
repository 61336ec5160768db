-- Commands travel through the outbox like events, with one handler each. A command may
-- carry an ordering key: deliveries with the same key run one at a time, in send order.
ALTER TABLE keel_events ADD COLUMN ordering_key TEXT;
ALTER TABLE keel_deliveries ADD COLUMN ordering_key TEXT;
CREATE INDEX keel_deliveries_keyed ON keel_deliveries (ordering_key, event_id)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;

-- One row per ordering key: leased by the worker handling that key's commands.
CREATE TABLE keel_keys (
    key          TEXT PRIMARY KEY,
    leased_until BIGINT,
    leased_by    TEXT
);
