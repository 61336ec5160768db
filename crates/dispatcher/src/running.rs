//! The deliveries running in this process: a count that every delivery raises when it is
//! spawned and lowers when it ends, and a wait for the count to reach zero.
//!
//! A counter and a `Notify` rather than a `watch` channel: a delivery starting or ending
//! touches one atomic, and only the last one to end wakes the waiters (a `watch` woke every
//! waiter at every change, a visible cost at tens of thousands of deliveries per second).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Running {
    count: AtomicUsize,
    /// Deliveries ended since the process started, for the relay's pace.
    ended: AtomicU64,
    idle: Notify,
}

impl Running {
    /// One more delivery runs.
    pub(crate) fn start(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// One delivery ended; the last one wakes whoever waits for idleness.
    pub(crate) fn end(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// The deliveries running now.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The deliveries ended so far.
    pub(crate) fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// Returns once no delivery runs.
    pub(crate) async fn until_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so an end between the check and the wait is seen.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}
