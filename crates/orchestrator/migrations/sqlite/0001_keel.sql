-- Keel's tables on SQLite. Ids are UUIDs as text, payloads JSON text, and times integer
-- milliseconds since the Unix epoch, always computed by SQLite itself
-- (`CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)`), never by the process.

-- Rows that stand for named locks (`Tx::lock_named`). Every writing unit of work already
-- holds the database's write lock; the row still records the name.
CREATE TABLE keel_locks (
    name       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

-- The transactional outbox (see the PostgreSQL schema for the meaning of each column).
CREATE TABLE keel_events (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    occurred_at    TEXT NOT NULL,
    payload        TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT,
    ordering_key   TEXT,
    routed         BOOLEAN NOT NULL,
    created_at     INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
CREATE INDEX keel_events_unrouted ON keel_events (created_at) WHERE NOT routed;

CREATE TABLE keel_deliveries (
    event_id        TEXT NOT NULL,
    handler         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'done', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    leased_until    INTEGER,
    leased_by       TEXT,
    last_error      TEXT,
    updated_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    ordering_key    TEXT,
    PRIMARY KEY (event_id, handler)
);
CREATE INDEX keel_deliveries_due ON keel_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX keel_deliveries_keyed ON keel_deliveries (ordering_key, event_id)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;
CREATE INDEX keel_deliveries_done ON keel_deliveries (updated_at) WHERE status = 'done';
CREATE INDEX keel_deliveries_dead ON keel_deliveries (updated_at) WHERE status = 'dead';

CREATE TABLE keel_delivery_errors (
    event_id  TEXT NOT NULL,
    handler   TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    failed_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    error     TEXT NOT NULL,
    PRIMARY KEY (event_id, handler, attempt)
);

CREATE TABLE keel_keys (
    key          TEXT PRIMARY KEY,
    leased_until INTEGER,
    leased_by    TEXT
);
