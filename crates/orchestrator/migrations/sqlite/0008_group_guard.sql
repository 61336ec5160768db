-- A guard that makes a `COMMIT` run by hand inside a group commit fail (see the PostgreSQL
-- migration of the same name). SQLite checks deferred foreign keys at `COMMIT` and keeps
-- the transaction open when the check fails.
CREATE TABLE keel_group_guard (
    marker TEXT PRIMARY KEY,
    missing TEXT NOT NULL REFERENCES keel_group_guard (marker) DEFERRABLE INITIALLY DEFERRED
) WITHOUT ROWID;
