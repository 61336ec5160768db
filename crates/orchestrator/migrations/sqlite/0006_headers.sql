-- Context that travels with a message besides its payload: the W3C trace context of the
-- span that recorded it (`traceparent`, `tracestate`) and whatever the application adds,
-- as a JSON object. NULL when there is none.
ALTER TABLE keel_events ADD COLUMN headers TEXT;
