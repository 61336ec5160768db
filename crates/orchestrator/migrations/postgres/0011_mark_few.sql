-- Done marks of a few deliveries, without the planner settings.
--
-- `keel_mark_done` pins its plan with `SET` clauses, and PostgreSQL saves and restores
-- those settings at every call: measured from a client, a call cost about 120 µs of server
-- time beyond its statement, against about 40 µs for this function, more than the marks
-- themselves when a call marks one or two deliveries, which is how handlers that end a
-- few milliseconds apart are marked.
-- This function needs no settings: it looks each delivery up by its whole primary key,
-- one statement per id, a plan no statistics can turn into a scan (the status is compared
-- as an expression, which the due index, partial on `status = 'pending'`, cannot serve).
-- Per row it costs more than the set-based statement, so it is for a handful of ids; a
-- batch goes to `keel_mark_done`.
--
-- `append`: as for `keel_mark_done`, a plain append to the done log; a delivery done a
-- second time then fails the call with a unique violation, and the caller marks again
-- without `append`.
CREATE FUNCTION keel_mark_done_few(the_handler TEXT, ids UUID[], append BOOLEAN)
RETURNS BIGINT
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    marked BIGINT := 0;
    one UUID;
    n BIGINT;
BEGIN
    FOREACH one IN ARRAY ids LOOP
        IF append THEN
            WITH d AS (
                DELETE FROM keel_deliveries
                WHERE event_id = one AND handler = the_handler AND (status || '') = 'pending'
                RETURNING event_id, handler, attempts)
            INSERT INTO keel_done (event_id, handler, attempts) SELECT * FROM d;
        ELSE
            WITH d AS (
                DELETE FROM keel_deliveries
                WHERE event_id = one AND handler = the_handler AND (status || '') = 'pending'
                RETURNING event_id, handler, attempts)
            INSERT INTO keel_done (event_id, handler, attempts) SELECT * FROM d
            ON CONFLICT (event_id, handler)
            DO UPDATE SET attempts = EXCLUDED.attempts, done_at = EXCLUDED.done_at;
        END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        marked := marked + n;
    END LOOP;
    RETURN marked;
END
$$;
