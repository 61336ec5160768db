-- Which handlers exist, whichever process runs them: every relay records the handlers of
-- its process here before it claims anything, and every outbox write creates a delivery
-- for each subscription of each message it writes. So routing does not depend on which
-- binary wrote an event: during a rolling deploy, a v1 producer writes the deliveries of a
-- handler only v2 has, and services sharing a database each get their own deliveries.
CREATE TABLE keel_subscriptions (
    message    TEXT NOT NULL,
    handler    TEXT NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (message, handler)
);
