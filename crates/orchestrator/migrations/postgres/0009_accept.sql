-- The accept's last check, as a function whose plan does not depend on the statistics.
--
-- An accept (messages from a broker into the inbox) removes, from the deliveries it has
-- just created, those that the done log already has: their handler completed them while the
-- accept's insert waited, too late for the insert's snapshot to see it (see the inbox
-- module). A handful of ids to look up by key in the done log, which holds every delivery
-- done within its retention: planned from statistics that had seen it small, the check
-- hash-joined a sequential scan of it instead, at every accept. The settings leave the
-- planner only the lookups, and hold only while the function runs.
CREATE FUNCTION keel_drop_done(the_handler TEXT, created UUID[])
RETURNS BIGINT
LANGUAGE plpgsql
VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    removed BIGINT;
BEGIN
    -- A dead arrival removed here takes the error row the accept wrote for it.
    WITH r AS (
        DELETE FROM keel_deliveries d
        WHERE d.handler = the_handler AND d.event_id = ANY (created)
          AND EXISTS (SELECT 1 FROM keel_done f
                      WHERE f.event_id = d.event_id AND f.handler = the_handler)
        RETURNING d.event_id, d.status),
    x AS (
        DELETE FROM keel_delivery_errors e USING r
        WHERE r.status = 'dead' AND e.event_id = r.event_id AND e.handler = the_handler
          AND e.attempt = 0)
    SELECT count(*) INTO removed FROM r;
    RETURN removed;
END
$$;
