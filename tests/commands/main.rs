//! The command bus, on real PostgreSQL and SQLite: sending, workers, per-key order and
//! exclusion, batches, retries, shutdown. Built on the same outbox and delivery machinery
//! as events.

mod likes;
mod ordering;
mod reliability;
mod sending;
mod support;
