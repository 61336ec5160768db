-- Done marks, as a function whose plan does not depend on the statistics.
--
-- A done mark deletes a batch of deliveries by key and appends them to the done log.
-- Planned from statistics that had seen the table empty (a burst after a quiet spell, a
-- queue drained after a restart), it walked the due index over every pending delivery and
-- filtered them by id: 5,000 rows read to mark 200 (with no statistics on the ids, the
-- planner takes 200 of them for the whole table). Here the only plan left is the primary
-- key's, one lookup per id: the settings rule out the others while the function runs, and
-- the status is compared as an expression (`status || ''`), which the due index, partial on
-- `status = 'pending'`, cannot serve.
--
-- `append`: a plain append to the done log, which spares the conflict check of every row;
-- a delivery done a second time (a backfill of events already delivered) then fails the
-- whole statement with a unique violation, and the caller marks again without `append`,
-- which keeps the latest attempt count.
CREATE FUNCTION keel_mark_done(the_handler TEXT, ids UUID[], append BOOLEAN)
RETURNS BIGINT
LANGUAGE plpgsql
VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    marked BIGINT;
BEGIN
    IF append THEN
        WITH d AS (
            DELETE FROM keel_deliveries
            WHERE handler = the_handler AND event_id = ANY (ids) AND (status || '') = 'pending'
            RETURNING event_id, handler, attempts)
        INSERT INTO keel_done (event_id, handler, attempts) SELECT * FROM d;
    ELSE
        WITH d AS (
            DELETE FROM keel_deliveries
            WHERE handler = the_handler AND event_id = ANY (ids) AND (status || '') = 'pending'
            RETURNING event_id, handler, attempts)
        INSERT INTO keel_done (event_id, handler, attempts) SELECT * FROM d
        ON CONFLICT (event_id, handler)
        DO UPDATE SET attempts = EXCLUDED.attempts, done_at = EXCLUDED.done_at;
    END IF;
    GET DIAGNOSTICS marked = ROW_COUNT;
    RETURN marked;
END
$$;
