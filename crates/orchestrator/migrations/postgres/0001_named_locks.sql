-- Rows that stand for named locks (`Tx::lock_named`). A row is created the first time
-- its name is locked and then reused; locking it is a `SELECT ... FOR UPDATE`.
CREATE TABLE keel_locks (
    name       TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
