//! What a handler receives besides its event.

use std::sync::Arc;

use keel_domain::{Envelope, EventId};
use keel_orchestrator::{Backend, Database, Error, Tx, TxFn, UnitOfWorkOptions};

use crate::Dispatcher;

/// The context of one delivery of one event to one handler.
///
/// It never holds the producer's transaction (that one has committed). A handler that
/// writes opens its own unit of work with [`HandlerContext::unit_of_work`]; the events that
/// unit of work records are delivered after *its* commit, marked as caused by this event.
///
/// That unit of work is the delivery's commit point: its first statement marks the
/// delivery done, in the same transaction as the handler's effects. Delivery is at least
/// once (a crash before the mark means the handler runs again), but a repeated delivery of
/// an event whose effects committed finds the mark and changes nothing: the effects happen
/// once. Hence one unit of work per delivery; a second one is refused.
pub struct HandlerContext<B: Backend> {
    db: Database<B>,
    dispatcher: Dispatcher<B>,
    envelopes: Vec<Arc<Envelope>>,
    handler: &'static str,
    attempt: u32,
    /// Its deliveries have an ordering key: their key's next one waits for their commit.
    keyed: bool,
    opened: bool,
    processed: bool,
}

impl<B: Backend> std::fmt::Debug for HandlerContext<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerContext")
            .field("handler", &self.handler)
            .field("message", &self.envelopes[0].name)
            .field("count", &self.envelopes.len())
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl<B: Backend> HandlerContext<B> {
    pub(crate) fn new(
        dispatcher: Dispatcher<B>,
        envelopes: Vec<Arc<Envelope>>,
        handler: &'static str,
        attempt: u32,
        keyed: bool,
    ) -> Self {
        assert!(
            !envelopes.is_empty(),
            "a delivery carries at least one message"
        );
        HandlerContext {
            db: dispatcher.database().clone(),
            dispatcher,
            envelopes,
            handler,
            attempt,
            keyed,
            opened: false,
            processed: false,
        }
    }

    /// Whether this delivery's unit of work committed (or found the delivery already done).
    pub(crate) fn processed(&self) -> bool {
        self.processed
    }

    /// Whether the handler opened its unit of work.
    pub(crate) fn opened(&self) -> bool {
        self.opened
    }

    /// The event's id (the first command's, for a batch): the idempotency key to give to
    /// external systems.
    pub fn event_id(&self) -> EventId {
        self.envelopes[0].id
    }

    /// The whole envelope of the event being handled (the first command's, for a batch).
    pub fn envelope(&self) -> &Envelope {
        &self.envelopes[0]
    }

    /// Every envelope of this delivery: one, or the commands of a batch in their key's
    /// order (commit order, for ordered keys).
    pub fn envelopes(&self) -> impl Iterator<Item = &Envelope> {
        self.envelopes.iter().map(|e| e.as_ref())
    }

    /// The name of the handler running.
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// Which delivery attempt this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Runs the handler's own unit of work, named after the handler; its events are
    /// released after its commit, as caused by the event being handled.
    ///
    /// If a previous delivery of this event already committed, the result is
    /// [`Error::AlreadyProcessed`] and nothing the steps did commits (alone, they do not
    /// run; in a group, which marks its deliveries done just before its commit, they may
    /// have run once and been rolled back): return it with `?` and the delivery is done.
    /// A second call in one delivery fails with [`Error::SecondHandlerUnitOfWork`].
    pub async fn unit_of_work<T, F>(&mut self, steps: F) -> Result<T, Error>
    where
        F: AsyncFnMut(&mut Tx<'_, B>) -> Result<T, Error>,
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        let options = UnitOfWorkOptions::named(self.handler);
        self.unit_of_work_with(&options, steps).await
    }

    /// [`HandlerContext::unit_of_work`] with explicit options (the causation is added), as
    /// [`Session::unit_of_work_with`](crate::Session::unit_of_work_with) takes them.
    pub async fn unit_of_work_with<T, F>(
        &mut self,
        options: &UnitOfWorkOptions,
        steps: F,
    ) -> Result<T, Error>
    where
        F: AsyncFnMut(&mut Tx<'_, B>) -> Result<T, Error>,
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        if self.opened {
            return Err(Error::SecondHandlerUnitOfWork {
                handler: self.handler,
            });
        }
        self.opened = true;
        let ids = self.envelopes.iter().map(|e| e.id).collect();
        let mut options = options
            .clone()
            .caused_by(&self.envelopes[0])
            .processing_all(ids, self.handler);
        if let Some(grouping) = self.dispatcher.options().group_commit {
            // A group waits for members only if more can come: it begins at once for a
            // keyed delivery (the key's next one waits for its commit), and for one that
            // started while every delivery slot is taken.
            let grouping = if self.keyed || !self.dispatcher.has_free_slot() {
                grouping.window(std::time::Duration::ZERO)
            } else {
                grouping
            };
            options = options.grouped(grouping);
        }
        match self.db.unit_of_work_with(&options, steps).await {
            Ok(receipt) => {
                self.processed = true;
                self.dispatcher.dispatch(receipt)
            }
            Err(error @ Error::AlreadyProcessed { .. }) => {
                self.processed = true;
                Err(error)
            }
            Err(error) => Err(error),
        }
    }
}
