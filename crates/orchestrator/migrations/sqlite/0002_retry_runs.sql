-- A delivery retried from the dead letter starts a fresh run of its retry policy, while its
-- attempt numbers count on (so the new errors join the history under new numbers):
-- `retried_from` is the number of attempts made before the last retry.
ALTER TABLE keel_deliveries ADD COLUMN retried_from INTEGER NOT NULL DEFAULT 0;
