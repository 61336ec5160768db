-- Which handlers exist, whichever process runs them: every relay records the handlers of
-- its process here before it claims anything, and every outbox write creates a delivery
-- for each subscription of each message it writes (see the PostgreSQL migration).
CREATE TABLE keel_subscriptions (
    message    TEXT NOT NULL,
    handler    TEXT NOT NULL,
    first_seen INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    last_seen  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    PRIMARY KEY (message, handler)
);
