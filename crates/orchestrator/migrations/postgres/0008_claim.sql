-- The relay's claim, as a function whose plan does not depend on the table's statistics.
--
-- A queue's statistics lag behind it: a burst accepted into a table the planner last saw
-- empty is planned as a tiny table, and the claim then reads and sorts every due row (or
-- scans the events) to return a handful, milliseconds per claim. The only good plan is
-- known: walk the due index in order and stop at the limit, update the locked rows by
-- their address, look each event up by its key. The settings below leave the planner no
-- other, and hold only while the function runs. (PL/pgSQL rather than SQL: it keeps the
-- statement's plan for the session, where an SQL function would plan it at every call.)
CREATE FUNCTION keel_claim(claim_limit BIGINT, lease_ms BIGINT, token UUID, handlers TEXT[])
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
    FROM u LEFT JOIN keel_events e ON e.id = u.event_id;
END
$$;
