-- Context that travels with a message besides its payload: a W3C trace context
-- (`traceparent`, `tracestate`) or whatever the application sets (`tx.header`), as a JSON
-- object. NULL when there is none.
ALTER TABLE keel_events ADD COLUMN headers TEXT;
