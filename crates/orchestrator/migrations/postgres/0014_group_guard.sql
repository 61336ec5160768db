-- A guard that makes a `COMMIT` run by hand inside a group commit fail.
--
-- A group of units of work writes its members' done marks just before its own `COMMIT`. A
-- member that committed the group's transaction by hand would commit the effects of the
-- members before it without their marks, and those members would run again. So a group's
-- transaction holds one row here whose reference is missing, checked at commit time
-- (`DEFERRABLE INITIALLY DEFERRED`): any `COMMIT` fails while the row is there, and the
-- group deletes it in the round trip of its own `COMMIT`. Unlogged: the row never outlives
-- its transaction, so it needs no WAL.
--
-- The reference points at a table that stays empty, not at the guard itself: deleting a
-- guard row then checks nothing (a row of a referenced table would be looked up in every
-- referencing row, a scan at every commit).
CREATE UNLOGGED TABLE keel_group_guard_none (id UUID PRIMARY KEY);

CREATE UNLOGGED TABLE keel_group_guard (
    marker UUID PRIMARY KEY,
    missing UUID NOT NULL REFERENCES keel_group_guard_none (id) DEFERRABLE INITIALLY DEFERRED
);

-- The guard's writes, in functions so that their plans are kept per session (a group sends
-- them in simple queries, which PostgreSQL would otherwise plan at every call).
CREATE FUNCTION keel_guard_group(the_marker UUID) RETURNS VOID
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO keel_group_guard (marker, missing)
    VALUES (the_marker, '00000000-0000-0000-0000-000000000000');
END
$$;

CREATE FUNCTION keel_unguard_group(the_marker UUID) RETURNS VOID
LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM keel_group_guard WHERE marker = the_marker;
END
$$;
