//! The dead letter: deliveries that exhausted their retries or failed permanently, kept
//! with the event and every attempt's error, to inspect, retry or discard.

use keel_domain::EventId;
use keel_orchestrator::operations::DeadFilter;
use keel_orchestrator::outbox::DeadLetter;
use keel_orchestrator::{Backend, Database, Error, ensure_outside_unit_of_work};

/// Lists, shows, retries and discards dead deliveries.
///
/// ```no_run
/// # mod keel { pub use keel_dispatcher::Dispatcher; pub use keel_orchestrator::Error; }
/// # async fn run(app: keel::Dispatcher<sqlx::Postgres>) -> Result<(), keel::Error> {
/// let dead = app.dead_letters();
/// for letter in dead.list(50).await? {
///     println!("{} / {}: {:?}", letter.event_name, letter.handler, letter.failures.last());
///     dead.retry(letter.event_id, &letter.handler).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct DeadLetters<B: Backend> {
    db: Database<B>,
    wake: std::sync::Arc<crate::wake::Wake>,
    purge_batch: u32,
}

impl<B: Backend> Clone for DeadLetters<B> {
    fn clone(&self) -> Self {
        DeadLetters {
            db: self.db.clone(),
            wake: self.wake.clone(),
            purge_batch: self.purge_batch,
        }
    }
}

impl<B: Backend> DeadLetters<B> {
    pub(crate) fn new(
        db: Database<B>,
        wake: std::sync::Arc<crate::wake::Wake>,
        purge_batch: u32,
    ) -> Self {
        DeadLetters {
            db,
            wake,
            purge_batch,
        }
    }

    /// The oldest `limit` dead deliveries.
    pub async fn list(&self, limit: u32) -> Result<Vec<DeadLetter>, Error> {
        self.find(&DeadFilter::all(limit)).await
    }

    /// The dead deliveries `filter` selects (by handler, message, error text, age), oldest
    /// first.
    pub async fn find(&self, filter: &DeadFilter) -> Result<Vec<DeadLetter>, Error> {
        ensure_outside_unit_of_work("read the dead letter")?;
        B::dead_find(&self.db, filter).await
    }

    /// How many deliveries are dead.
    pub async fn count(&self) -> Result<i64, Error> {
        ensure_outside_unit_of_work("read the dead letter")?;
        B::dead_count(&self.db).await
    }

    /// One dead delivery, if it is dead.
    pub async fn show(
        &self,
        event_id: EventId,
        handler: &str,
    ) -> Result<Option<DeadLetter>, Error> {
        ensure_outside_unit_of_work("read the dead letter")?;
        B::dead_show(&self.db, event_id, handler).await
    }

    /// Puts a dead delivery back in the queue, due now, for a fresh run of its retry policy
    /// whose attempt numbers count on. Returns `false` if it is not dead. Its error history
    /// is kept.
    pub async fn retry(&self, event_id: EventId, handler: &str) -> Result<bool, Error> {
        ensure_outside_unit_of_work("retry a dead delivery")?;
        let retried = B::dead_retry(&self.db, event_id, handler).await?;
        if retried {
            self.wake.wake();
        }
        Ok(retried)
    }

    /// Removes a dead delivery and its error history (and the event, if no other delivery
    /// of it is left). Returns `false` if it is not dead.
    pub async fn discard(&self, event_id: EventId, handler: &str) -> Result<bool, Error> {
        ensure_outside_unit_of_work("discard a dead delivery")?;
        B::dead_discard(&self.db, event_id, handler).await
    }

    /// Removes the dead deliveries given up more than `older_than` ago, with their error
    /// history (and their events, if no other delivery of them is left), in bounded batches;
    /// returns the rows removed. The relay does this periodically per
    /// [`DeliveryOptions::dead_retention`](crate::DeliveryOptions::dead_retention).
    pub async fn purge(&self, older_than: std::time::Duration) -> Result<u64, Error> {
        ensure_outside_unit_of_work("purge the dead letter")?;
        crate::dispatcher::purge_all(
            &self.db,
            None,
            Some(older_than),
            self.purge_batch,
            &mut |_| {},
        )
        .await
    }
}
