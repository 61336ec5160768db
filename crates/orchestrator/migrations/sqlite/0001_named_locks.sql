-- Rows that stand for named locks (`Tx::lock_named`). On SQLite every writing unit of
-- work already holds the database write lock; the row still records the name.
CREATE TABLE keel_locks (
    name       TEXT PRIMARY KEY,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
