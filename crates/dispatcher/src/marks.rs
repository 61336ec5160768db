//! Marking deliveries done for handlers that wrote nothing through their context.
//!
//! A handler that opens its unit of work marks its delivery done in that transaction. One
//! that does not (it calls another system, or only logs) leaves the mark to the
//! dispatcher. Marked one by one, each such delivery would cost a transaction of its own
//! and bound a relay at a few thousand deliveries per second; instead the marks of every
//! delivery that ends while a mark is being written wait and go together in the next one.
//! Nothing waits on purpose: a lone delivery is marked at once, and batches form only
//! under load. A delivery counts as running until its mark is written, so
//! [`Dispatcher::wait_idle`](crate::Dispatcher::wait_idle) still means "nothing left to do".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_domain::EventId;
use keel_orchestrator::{Backend, Database, Error};
use tokio::sync::{mpsc, oneshot};

/// Deliveries (or batches) whose marks are taken per write at most.
pub(crate) const MAX_MARKS: usize = 2_000;

/// The marks of one delivery, or of one batch of commands.
struct Mark {
    event_ids: Vec<EventId>,
    handler: String,
    written: oneshot::Sender<Result<(), String>>,
}

/// The queue of marks to write; one writer task per dispatcher, started on first use.
pub(crate) struct Marks {
    queue: std::sync::OnceLock<mpsc::UnboundedSender<Mark>>,
    /// Deliveries whose handler has returned and whose mark is queued or being written.
    pending: Arc<AtomicUsize>,
}

impl Marks {
    pub(crate) fn new() -> Self {
        Marks {
            queue: std::sync::OnceLock::new(),
            pending: Arc::default(),
        }
    }

    /// Deliveries waiting only for their mark: the relay does not count them against its
    /// claim window (they run no handler), up to [`MAX_MARKS`] of them.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Queues the marks of `event_ids` to `handler`; the future it returns resolves once
    /// they are written (or the write failed: the delivery is then redelivered when its
    /// lease expires).
    pub(crate) fn mark_done<B: Backend>(
        &self,
        db: &Database<B>,
        event_ids: &[EventId],
        handler: &str,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(write_marks(db.clone(), receiver));
            sender
        });
        let stopped = || "the dispatcher's mark writer has stopped".to_owned();
        let (written, wait) = oneshot::channel();
        let mark = Mark {
            event_ids: event_ids.to_vec(),
            handler: handler.to_owned(),
            written,
        };
        let pending = Pending::new(&self.pending);
        let queued = queue.send(mark).map_err(|_| stopped());
        async move {
            queued?;
            let result = wait.await.map_err(|_| stopped())?;
            drop(pending);
            result
        }
    }
}

/// One delivery counted in [`Marks::pending`] until dropped.
struct Pending(Arc<AtomicUsize>);

impl Pending {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Pending(count.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes the queued marks: everything queued meanwhile, in one unit of work, one
/// statement per handler.
async fn write_marks<B: Backend>(db: Database<B>, mut receiver: mpsc::UnboundedReceiver<Mark>) {
    let mut batch = Vec::new();
    while receiver.recv_many(&mut batch, MAX_MARKS).await > 0 {
        let mut by_handler: BTreeMap<&str, Vec<EventId>> = BTreeMap::new();
        for mark in &batch {
            by_handler
                .entry(mark.handler.as_str())
                .or_default()
                .extend_from_slice(&mark.event_ids);
        }
        let written = B::mark_done_many(&db, &by_handler)
            .await
            .map_err(|e: Error| e.to_string());
        for mark in batch.drain(..) {
            let _ = mark.written.send(written.clone());
        }
    }
}
