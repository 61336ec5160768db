-- A guard that makes a `COMMIT` run by hand inside a group commit fail.
--
-- A group of units of work writes its members' done marks just before its own `COMMIT`. A
-- member that committed the group's transaction by hand would commit the effects of the
-- members before it without their marks, and those members would run again. So a group's
-- transaction holds one row here whose reference is missing, checked at commit time
-- (`DEFERRABLE INITIALLY DEFERRED`): any `COMMIT` fails while the row is there, and the
-- group deletes it in the round trip of its own `COMMIT`. Unlogged: the row never outlives
-- its transaction, so it needs no WAL.
CREATE UNLOGGED TABLE keel_group_guard (
    marker UUID PRIMARY KEY,
    missing UUID NOT NULL REFERENCES keel_group_guard (marker) DEFERRABLE INITIALLY DEFERRED
);
