//! Events after commit, on real PostgreSQL and SQLite: recorded in a unit of work,
//! released by its commit only, delivered to each handler independently, retried, chained.

mod delivery;
mod incident;
mod registry;
mod support;
