-- The claim starts where the relay's last claim ended.
--
-- `due_from`: a claim walks the due index in due order and reads, then skips, every
-- delivery leased and not yet done. Under a backlog the relay's own leased deliveries (its
-- claim buffer, up to 8 batches) sit at the head of that order, and every claim read them
-- again: about 1.1 ms of a claim to skip 2,000. The relay passes the latest due time its
-- claims leased, claims from the first due (NULL) at least every 100 ms and whenever a
-- claim from there comes back short, and moves back to where a full claim from the first
-- due ended (see the dispatcher's `cursor` module).
--
-- `claimed_due`: each claimed delivery's due time, for the relay's next `due_from`.
--
-- The four-argument `keel_claim` of `0012_generic_plans` stays: relays of the previous
-- version call it while a rolling deploy replaces them.
CREATE FUNCTION keel_claim(claim_limit BIGINT, lease_ms BIGINT, token UUID, handlers TEXT[],
                           due_from TIMESTAMPTZ)
RETURNS TABLE (
    claimed_id           UUID,
    claimed_handler      TEXT,
    claimed_attempts     INTEGER,
    claimed_retried_from INTEGER,
    claimed_due          TIMESTAMPTZ,
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
        WHERE status = 'pending' AND next_attempt_at <= now() AND next_attempt_at >= COALESCE(due_from, '-infinity')
          AND ordering_key IS NULL
          AND (leased_until IS NULL OR leased_until < now()) AND handler = ANY (handlers)
        ORDER BY next_attempt_at LIMIT claim_limit
        FOR UPDATE SKIP LOCKED),
    u AS (
        UPDATE keel_deliveries d
        SET leased_until = clock_timestamp() + lease_ms * interval '1 millisecond',
            leased_by = token, attempts = d.attempts + 1
        WHERE d.ctid = ANY (ARRAY(SELECT ctid FROM c))
        RETURNING d.event_id, d.handler, d.attempts, d.retried_from, d.next_attempt_at)
    SELECT u.event_id, u.handler, u.attempts, u.retried_from, u.next_attempt_at,
           e.id, e.name, e.aggregate_type, e.aggregate_id, e.occurred_at, e.payload,
           e.correlation_id, e.causation_id, e.headers
    FROM u LEFT JOIN LATERAL (
        SELECT * FROM keel_events WHERE keel_events.id = u.event_id OFFSET 0) e ON TRUE;
END
$$;

