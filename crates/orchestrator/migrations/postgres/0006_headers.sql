-- Context that travels with a message besides its payload: a W3C trace context
-- (`traceparent`, `tracestate`) or whatever the application sets (`tx.header`).
-- NULL when there is none, which is most events: nothing is stored for them.
ALTER TABLE keel_events ADD COLUMN headers JSONB;
