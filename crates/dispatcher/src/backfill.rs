//! Backfill: giving a handler deployed after some events were written the deliveries of
//! those events.
//!
//! A handler receives the events committed after its relay first recorded its subscription
//! (see the delivery guide). Older events are not replayed by themselves: an operator
//! decides, with [`Dispatcher::backfill`], from which time a new handler should see them.
//! Only events still kept can be backfilled: retention purges events with their last
//! delivery.

use keel_orchestrator::{Backend, Error, ensure_outside_unit_of_work};
use time::OffsetDateTime;

use crate::Dispatcher;

impl<B: Backend> Dispatcher<B> {
    /// Creates deliveries for `handler` (registered in this process) of every event of
    /// its message written since `since` that has none, and wakes the relay; returns how
    /// many were created. Events the handler already has a delivery for are left alone, so
    /// running it twice is harmless.
    ///
    /// Reads every kept event of the message: an operator's action, not a request path.
    ///
    /// `since` is a [`time::OffsetDateTime`] (the `time` crate, which the facade also
    /// offers as `keel::sqlx::types::time`): a week back is
    /// `OffsetDateTime::now_utc() - time::Duration::days(7)`.
    pub async fn backfill(&self, handler: &str, since: OffsetDateTime) -> Result<u64, Error> {
        self.create_deliveries(handler, since, false).await
    }

    /// Like [`backfill`](Self::backfill), but the events `handler` has already handled
    /// get a delivery again too. Only for handlers whose effect the receiving side
    /// deduplicates, such as a forwarder to a broker (re-publishing after the broker lost
    /// data): a handler that writes through its unit of work would run its effects again.
    pub async fn deliver_again(&self, handler: &str, since: OffsetDateTime) -> Result<u64, Error> {
        self.create_deliveries(handler, since, true).await
    }

    async fn create_deliveries(
        &self,
        handler: &str,
        since: OffsetDateTime,
        again: bool,
    ) -> Result<u64, Error> {
        ensure_outside_unit_of_work("backfill a handler")?;
        let Some(found) = self.registry().handlers().find(|h| h.name() == handler) else {
            return Err(Error::rejected(std::io::Error::other(format!(
                "no handler named `{handler}` is registered in this process: backfill from a \
                 process that runs it"
            ))));
        };
        let created = B::backfill(self.database(), found.event(), handler, since, again).await?;
        if created > 0 {
            self.wake_relay();
        }
        Ok(created)
    }
}
