//! The inbox: messages received from another system (a broker, a webhook) become this
//! service's deliveries.
//!
//! A received message is written to the outbox as if this service had recorded it, then
//! delivered by the relay: leases, retries with the handler's policy, the dead letter and
//! the processed marker are a local delivery's, whatever the transport. The sender may
//! deliver a message more than once (at least once, as every broker does): the event is
//! written once by id, and a delivery that exists or is done is not created again, so the
//! handler's effects still happen once per event id.

use keel_orchestrator::outbox::Incoming;
use keel_orchestrator::{Backend, Error, ensure_outside_unit_of_work};

use crate::Dispatcher;

impl<B: Backend> Dispatcher<B> {
    /// Writes `incoming` messages as deliveries to `handler` (registered in this process),
    /// in one transaction, and wakes the relay; returns how many deliveries were created
    /// (messages already accepted count none). Acknowledge the messages to their sender
    /// only once this returns `Ok`: they are then durable here.
    pub async fn accept(&self, handler: &str, incoming: &[Incoming]) -> Result<u64, Error> {
        ensure_outside_unit_of_work("accept messages")?;
        if !self.registry().handlers().any(|h| h.name() == handler) {
            return Err(Error::rejected(std::io::Error::other(format!(
                "no handler named `{handler}` is registered in this process: accept messages \
                 in the process that runs it"
            ))));
        }
        if incoming.is_empty() {
            return Ok(0);
        }
        let created = B::accept(self.database(), handler, incoming).await?;
        if created > 0 {
            self.wake_relay();
        }
        Ok(created)
    }
}
