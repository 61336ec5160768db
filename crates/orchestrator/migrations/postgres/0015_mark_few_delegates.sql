-- Done marks of a few deliveries go back to `keel_mark_done`.
--
-- `keel_mark_done_few` (migration 0011) looked each delivery up by its primary key in a
-- statement without planner settings, trusting that no statistics could make that a scan.
-- But PL/pgSQL keeps a statement's plan for the session once made without its arguments,
-- and a plan made while `keel_deliveries` held a page or two is a sequential scan: a
-- session that began its marks on a quiet table read the whole table for every delivery
-- it marked once the table had grown (24,990 rows read to mark 5 of 5,000). The set-based
-- `keel_mark_done` has its plan pinned by its settings and, since migration 0012, kept
-- for the session.
--
-- Keel no longer calls `keel_mark_done_few`; it stays, as a call of `keel_mark_done`, for
-- the processes of an older build still running during a rolling deploy, and goes in a
-- later migration.
CREATE OR REPLACE FUNCTION keel_mark_done_few(the_handler TEXT, ids UUID[], append BOOLEAN)
RETURNS BIGINT
LANGUAGE sql
VOLATILE
AS $$ SELECT keel_mark_done(the_handler, ids, append) $$;
