//! The example's tests, on PostgreSQL and SQLite (run by the test command).

use keel::Database;

async fn placeholder(_db: Database) {}

keel_testing::backend_tests!(placeholder);
