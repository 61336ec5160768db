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
//! A retry this process scheduled wakes the first loop when it is due.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

/// Retries due within this long of each other share one timed wake-up.
const TIMED_WAKE_SLOT_MS: u64 = 10;

/// The wake-ups of a relay's claim loops.
#[derive(Debug)]
pub(crate) struct Wake {
    any: Signal,
    backlog: Signal,
    /// Whether a claim may have left due work for want of room in the window (the low
    /// bit), and how many times that was recorded (the other bits), so that a claim begun
    /// before another loop recorded it does not clear it.
    held_back: AtomicU64,
    /// Timed wake-ups pending, by due slot (ms since `started`).
    timed: Mutex<BTreeSet<u64>>,
    /// The origin of the timed wake-ups' slots.
    started: Instant,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            any: Signal::default(),
            backlog: Signal::default(),
            held_back: AtomicU64::new(0),
            timed: Mutex::default(),
            started: Instant::now(),
        }
    }
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

    /// Notes the held-back state before a claim, for [`Wake::claimed_all_due`].
    pub(crate) fn held_back_state(&self) -> u64 {
        self.held_back.load(Ordering::Acquire)
    }

    /// Records that due work may be left for want of room in the claim window: a claim
    /// took all the room it had, or found none, or a keyed delivery ended without room.
    pub(crate) fn held_back(&self) {
        let _ = self
            .held_back
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(((v >> 1) + 1) << 1 | 1)
            });
    }

    /// A claim begun at `state` found less than it could take: nothing more was due then,
    /// unless another loop recorded work held back since.
    pub(crate) fn claimed_all_due(&self, state: u64) {
        let _ =
            self.held_back
                .compare_exchange(state, state & !1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Room was freed in the claim window: wakes the first loop if a claim was held back
    /// for want of it.
    pub(crate) fn room_freed(&self) {
        if self.held_back.load(Ordering::Acquire) & 1 == 1 {
            self.wake();
        }
    }

    /// Wakes the first loop in `delay` (a retry then due), unless `stop` says the relay is
    /// stopping. Retries due within [`TIMED_WAKE_SLOT_MS`] of each other share one timer.
    pub(crate) fn wake_in(self: &Arc<Self>, delay: Duration, mut stop: watch::Receiver<bool>) {
        let due = self.started.elapsed() + delay;
        let slot = (due.as_millis() as u64).div_ceil(TIMED_WAKE_SLOT_MS) + 1;
        let mut timed = self.timed.lock().unwrap_or_else(|e| e.into_inner());
        if !timed.insert(slot) {
            return;
        }
        drop(timed);
        let at = self.started + Duration::from_millis(slot * TIMED_WAKE_SLOT_MS);
        let wake = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => wake.wake(),
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
            let mut timed = wake.timed.lock().unwrap_or_else(|e| e.into_inner());
            timed.remove(&slot);
        });
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
