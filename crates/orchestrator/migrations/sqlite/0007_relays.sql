-- The processes running relays, as they report themselves every few seconds, so that an
-- operator can tell which process holds a lease: every lease token a process writes
-- starts with its `process` identity (the first 18 characters of the token's text).
-- Rows silent for a day are removed by the next report of any relay.
CREATE TABLE keel_relays (
    process    TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    started_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    last_seen  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

-- `keel status` counts the deliveries finished in the last minute.
CREATE INDEX keel_done_at ON keel_done (done_at);
