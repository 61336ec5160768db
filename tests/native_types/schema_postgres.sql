CREATE TYPE grade AS ENUM ('bronze', 'silver', 'gold');
CREATE TABLE badges (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    grade      grade NOT NULL,
    awarded_at TIMESTAMPTZ NOT NULL,
    details    JSONB NOT NULL,
    tags       TEXT[] NOT NULL,
    points     INTEGER NOT NULL
);
