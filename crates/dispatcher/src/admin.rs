//! The operator's view of a database: what the `keel` command reads and does, usable
//! without the service's handlers or a running relay.
//!
//! A dispatcher is built from a registry of handlers; an operator's tool has none, and
//! must not start a relay that would claim deliveries. [`Admin`] opens onto a
//! [`Database`] alone: it reads the status per handler (from the subscriptions every relay
//! records), lists, retries and discards dead deliveries, purges, and creates deliveries
//! again for a handler by name. Relays pick retried and re-created deliveries up at their
//! next poll.

use std::time::Duration;

use keel_orchestrator::operations::{Status, Unsubscribed};
use keel_orchestrator::{Backend, Database, Error, ensure_outside_unit_of_work};
use time::OffsetDateTime;

use crate::{DeadLetters, DeliveryOptions};

/// What an operator reads and does on a Keel database, without the service's handlers or a
/// running relay: the status per handler (from the subscriptions every relay records), the
/// dead letter (list, retry, discard), purges, and deliveries created again for a handler
/// by name. Relays pick retried and re-created deliveries up at their next poll. The `keel`
/// command is built on it (`docs/guide/operations.md`).
///
/// ```no_run
/// # mod keel { pub use keel_dispatcher::Admin; pub use keel_orchestrator::{Database, Error}; }
/// # async fn run() -> Result<(), keel::Error> {
/// use keel::Admin;
/// let db = keel::Database::<sqlx::Postgres>::connect("postgres://localhost/app").await?;
/// let admin = Admin::new(db);
/// for handler in admin.status().await?.handlers {
///     println!("{}: {} pending, {} dead", handler.handler, handler.pending, handler.dead);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Admin<B: Backend> {
    db: Database<B>,
    dead: DeadLetters<B>,
}

impl<B: Backend> Admin<B> {
    /// The operator's view of `db`.
    pub fn new(db: Database<B>) -> Self {
        let dead = DeadLetters::new(
            db.clone(),
            Default::default(),
            DeliveryOptions::default().purge_batch,
        );
        Admin { db, dead }
    }

    /// The database.
    pub fn database(&self) -> &Database<B> {
        &self.db
    }

    /// Deliveries per handler (pending, in flight, retrying, dead, oldest pending age, done
    /// in the last minute, leases per relay), unrouted events and the relays at work.
    pub async fn status(&self) -> Result<Status, Error> {
        ensure_outside_unit_of_work("read the delivery status")?;
        B::status(&self.db).await
    }

    /// Reads the status and sets the gauges of [`keel_orchestrator::telemetry`] from it
    /// (each relay does this every few seconds); returns the status read.
    pub async fn record_gauges(&self) -> Result<Status, Error> {
        let status = self.status().await?;
        keel_orchestrator::telemetry::record_status(&status);
        Ok(status)
    }

    /// The dead letter.
    pub fn dead_letters(&self) -> &DeadLetters<B> {
        &self.dead
    }

    /// Every (message, handler) pair a relay recorded on this database.
    pub async fn subscriptions(&self) -> Result<Vec<(String, String)>, Error> {
        ensure_outside_unit_of_work("read the subscriptions")?;
        B::subscriptions(&self.db).await
    }

    /// Removes the subscriptions of `handler`, a handler gone from every binary, with its
    /// pending deliveries (their error history, and their events when no other delivery
    /// needs them), in one transaction: events committed from now on no longer wait for it.
    /// Its dead deliveries stay, for the dead letter. A binary that still registers the
    /// handler records its subscription again when its relay starts.
    pub async fn unsubscribe(&self, handler: &str) -> Result<Unsubscribed, Error> {
        ensure_outside_unit_of_work("unsubscribe a handler")?;
        B::unsubscribe(&self.db, handler).await
    }

    /// Creates, for the subscribed handler `handler`, the deliveries its kept events
    /// written since `since` lack; with `again`, those it has done too (only for handlers
    /// whose receiver deduplicates, such as a forwarder to a broker). Returns how many;
    /// [`Error::Rejected`] when no relay has recorded a handler of that name.
    /// See [`Dispatcher::backfill`](crate::Dispatcher::backfill).
    pub async fn create_deliveries(
        &self,
        handler: &str,
        since: OffsetDateTime,
        again: bool,
    ) -> Result<u64, Error> {
        ensure_outside_unit_of_work("backfill a handler")?;
        let subscriptions = self.subscriptions().await?;
        let Some((message, _)) = subscriptions.iter().find(|(_, h)| h == handler) else {
            return Err(Error::rejected(std::io::Error::other(format!(
                "no relay has recorded a handler named `{handler}` on this database: \
                 check the name with `keel status`"
            ))));
        };
        B::backfill(&self.db, message, handler, since, again).await
    }

    /// Removes done deliveries finished more than `done_older_than` ago and dead ones given
    /// up more than `dead_older_than` ago (`None`: keep them), in bounded batches, calling
    /// `progress` with the running total after each; returns the rows removed.
    pub async fn purge(
        &self,
        done_older_than: Option<Duration>,
        dead_older_than: Option<Duration>,
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<u64, Error> {
        ensure_outside_unit_of_work("purge")?;
        let batch = DeliveryOptions::default().purge_batch;
        crate::dispatcher::purge_all(
            &self.db,
            done_older_than,
            dead_older_than,
            batch,
            &mut progress,
        )
        .await
    }
}
