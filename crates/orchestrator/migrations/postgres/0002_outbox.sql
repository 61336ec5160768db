-- The transactional outbox: events recorded by units of work, written in the producing
-- transaction, and one delivery row per (event, handler) carrying its own state.
-- Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE keel_events (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    occurred_at    TEXT NOT NULL,
    payload        TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id   TEXT,
    -- FALSE until delivery rows exist for the event's handlers (the relay routes it).
    routed         BOOLEAN NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX keel_events_unrouted ON keel_events (created_at) WHERE NOT routed;
CREATE INDEX keel_events_created ON keel_events (created_at);

-- status: 'pending' (to deliver, possibly leased by a relay or a fast path until
-- leased_until), 'done', or 'dead' (retries exhausted or permanent failure).
CREATE TABLE keel_deliveries (
    event_id        TEXT NOT NULL,
    handler         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    leased_until    BIGINT,
    leased_by       TEXT,
    last_error      TEXT,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (event_id, handler)
);
CREATE INDEX keel_deliveries_due ON keel_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX keel_deliveries_done ON keel_deliveries (updated_at) WHERE status = 'done';
CREATE INDEX keel_deliveries_dead ON keel_deliveries (updated_at) WHERE status = 'dead';

-- Every failed attempt of a delivery, for the dead letter.
CREATE TABLE keel_delivery_errors (
    event_id  TEXT NOT NULL,
    handler   TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    failed_at BIGINT NOT NULL,
    error     TEXT NOT NULL,
    PRIMARY KEY (event_id, handler, attempt)
);
