-- A finished delivery leaves keel_deliveries and a line is appended to keel_done (see the
-- PostgreSQL migration): keel_deliveries holds only 'pending' and 'dead' rows, and a
-- delivery missing from it is done. The status column's CHECK still allows 'done', which
-- nothing writes any more (SQLite cannot change a CHECK in place).
--
-- One B-tree, keyed like the deliveries: every page a commit touches is written to the
-- WAL, so the log adds as few as it can. Event ids are time-ordered (UUIDv7), so the purge
-- finds old lines first in key order without an index on done_at.
CREATE TABLE keel_done (
    event_id TEXT NOT NULL,
    handler  TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    done_at  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    PRIMARY KEY (event_id, handler)
) WITHOUT ROWID;

INSERT INTO keel_done (event_id, handler, attempts, done_at)
SELECT event_id, handler, attempts, updated_at FROM keel_deliveries WHERE status = 'done';
DELETE FROM keel_deliveries WHERE status = 'done';
DROP INDEX keel_deliveries_done;
