-- The claim, the done marks and the accept's done check keep their plans.
--
-- PL/pgSQL prepares each statement once per session, but PostgreSQL plans a prepared
-- statement again at every call while its generic plan (made without the arguments) is
-- estimated dearer than the plans made with them. The claim's `LIMIT claim_limit` is
-- estimated at a tenth of the table without its value, so its generic plan looked a
-- hundred times dearer and was never chosen: the claim was planned at every call (769
-- plans in 753 claims of a drain, about 0.3 ms each under load).
--
-- A kept plan must be right for every size the tables will have, including the size they
-- had when it was made: a relay's first claim often meets empty tables, where a join that
-- reads a whole table costs as little as a lookup. So every lookup below is a subquery
-- the planner cannot merge into a join (`OFFSET 0`), run once per row with that row's key:
-- an index lookup whatever the statistics, or a lookup of keys gathered first (`= ANY
-- (ARRAY(…))`). The other choices are pinned by the settings.

CREATE OR REPLACE FUNCTION keel_claim(claim_limit BIGINT, lease_ms BIGINT, token UUID,
                                      handlers TEXT[])
RETURNS TABLE (
    claimed_id           UUID,
    claimed_handler      TEXT,
    claimed_attempts     INTEGER,
    claimed_retried_from INTEGER,
    id                   UUID,
    name                 TEXT,
    aggregate_type       TEXT,
    aggregate_id         TEXT,
    occurred_at          TIMESTAMPTZ,
    payload              JSONB,
    correlation_id       UUID,
    causation_id         UUID,
    headers              JSONB
)
LANGUAGE plpgsql
VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH c AS (
        SELECT ctid FROM keel_deliveries
        WHERE status = 'pending' AND next_attempt_at <= now() AND ordering_key IS NULL
          AND (leased_until IS NULL OR leased_until < now()) AND handler = ANY (handlers)
        ORDER BY next_attempt_at LIMIT claim_limit
        FOR UPDATE SKIP LOCKED),
    u AS (
        UPDATE keel_deliveries d
        SET leased_until = clock_timestamp() + lease_ms * interval '1 millisecond',
            leased_by = token, attempts = d.attempts + 1
        WHERE d.ctid = ANY (ARRAY(SELECT ctid FROM c))
        RETURNING d.event_id, d.handler, d.attempts, d.retried_from)
    SELECT u.event_id, u.handler, u.attempts, u.retried_from,
           e.id, e.name, e.aggregate_type, e.aggregate_id, e.occurred_at, e.payload,
           e.correlation_id, e.causation_id, e.headers
    FROM u LEFT JOIN LATERAL (
        SELECT * FROM keel_events WHERE keel_events.id = u.event_id OFFSET 0) e ON TRUE;
END
$$;

CREATE OR REPLACE FUNCTION keel_drop_done(the_handler TEXT, created UUID[])
RETURNS BIGINT
LANGUAGE plpgsql
VOLATILE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    removed BIGINT;
BEGIN
    -- A dead arrival removed here takes the error row the accept wrote for it.
    WITH r AS (
        DELETE FROM keel_deliveries d
        WHERE d.handler = the_handler AND d.event_id = ANY (created)
          AND EXISTS (SELECT 1 FROM keel_done f
                      WHERE f.event_id = d.event_id AND f.handler = the_handler OFFSET 0)
        RETURNING d.event_id, d.status),
    x AS (
        DELETE FROM keel_delivery_errors e
        WHERE e.event_id = ANY (ARRAY(SELECT event_id FROM r WHERE status = 'dead'))
          AND e.handler = the_handler AND e.attempt = 0)
    SELECT count(*) INTO removed FROM r;
    RETURN removed;
END
$$;

-- The marks look deliveries up by their whole primary key: no other plan to keep.
ALTER FUNCTION keel_mark_done(TEXT, UUID[], BOOLEAN)
    SET plan_cache_mode = force_generic_plan;
