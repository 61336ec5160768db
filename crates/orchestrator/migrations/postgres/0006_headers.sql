-- Context that travels with a message besides its payload: the W3C trace context of the
-- span that recorded it (`traceparent`, `tracestate`) and whatever the application adds.
-- NULL when there is none, which is most events: nothing is stored for them.
ALTER TABLE keel_events ADD COLUMN headers JSONB;
