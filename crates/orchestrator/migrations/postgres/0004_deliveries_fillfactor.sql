-- Room in each page for the new version of a delivery row: leasing a delivery changes no
-- indexed column, so PostgreSQL can then update it in place (HOT) without touching the
-- table's four indexes.
ALTER TABLE keel_deliveries SET (fillfactor = 70);
