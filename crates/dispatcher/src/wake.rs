//! Waking a relay's claim loops.
//!
//! The first claim loop wakes for anything that may have made work due: a commit (a
//! `NOTIFY` or the in-process notifier), a retry scheduled, a delivery slot freed, an
//! operator's retry. The other loops claim only alongside a backlog: they wake when a loop
//! claimed a full batch. So an idle relay runs one claim per wake-up however many loops
//! it has, and a backlog has them all claiming.
//!
//! A slot freed in the claim window (a delivery ended, or now waits only for its done mark)
//! wakes the first loop only when a claim left due work behind for want of room: at low
//! load every delivery ends in an empty window, and a claim per delivery would find nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The wake-ups of a relay's claim loops.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    any: Signal,
    backlog: Signal,
    /// The last claim may have left due work for want of room in the window.
    held_back: AtomicBool,
}

impl Wake {
    /// Something may be due: wakes the first claim loop.
    pub(crate) fn wake(&self) {
        self.any.raise();
    }

    /// A loop claimed a full batch: more is due, wakes every loop.
    pub(crate) fn backlog(&self) {
        self.any.raise();
        self.backlog.raise();
    }

    /// Records whether a claim may have left due work behind for want of room (it took all
    /// the room it had) or not (it found less than it could take).
    pub(crate) fn held_back(&self, held_back: bool) {
        self.held_back.store(held_back, Ordering::Release);
    }

    /// Room was freed in the claim window: wakes the first loop if a claim was held back
    /// for want of it.
    pub(crate) fn room_freed(&self) {
        if self.held_back.load(Ordering::Acquire) {
            self.wake();
        }
    }

    /// The wake-ups so far of a loop (`first` or not); noted before its round.
    pub(crate) fn seen(&self, first: bool) -> u64 {
        self.signal(first).seen()
    }

    /// Sleeps until a wake-up for this loop after `seen`; the first loop also wakes after
    /// `nap`, to poll.
    pub(crate) async fn sleep(&self, first: bool, seen: u64, nap: Duration) {
        let nap = if first { Some(nap) } else { None };
        self.signal(first).sleep(seen, nap).await;
    }

    fn signal(&self, first: bool) -> &Signal {
        if first { &self.any } else { &self.backlog }
    }
}

/// A wake-up that is never lost: a loop that notes `seen` before its round and sleeps
/// after it returns at once if it was raised meanwhile.
#[derive(Debug, Default)]
struct Signal {
    epoch: AtomicU64,
    notify: Notify,
}

impl Signal {
    fn raise(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    fn seen(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    async fn sleep(&self, seen: u64, nap: Option<Duration>) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.seen() != seen {
            return;
        }
        match nap {
            Some(nap) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(nap) => {}
                }
            }
            None => notified.await,
        }
    }
}
