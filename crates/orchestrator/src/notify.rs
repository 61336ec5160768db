//! Waking other processes' relays after a commit that left them work.
//!
//! A notification is worth a round trip and a transaction of its own on the server, so it
//! is sent only when it can help: when a relay of *another* process listens (a relay of
//! this process is woken in memory), and at most once per window per pool, the commits of a
//! window being announced by its trailing notification. Notifications only save latency:
//! relays also poll, so a missed one delays a delivery by a poll interval, never loses it.
//!
//! Who listens is read from the server (a relay's listening connection has an
//! `application_name` starting with [`RELAY_APPLICATION_NAME`]), at most every
//! [`LISTENERS_CHECK_MS`], so a relay that dies is forgotten with its connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;

use crate::{Backend, Database};

/// Commits of one pool within this many milliseconds share one notification.
const WINDOW_MS: u64 = 2;

/// How long the answer to "does a relay of another process listen?" is trusted.
pub(crate) const LISTENERS_CHECK_MS: u64 = 500;

/// The start of the `application_name` of a relay's listening connection.
#[cfg(feature = "postgres")]
pub(crate) const RELAY_APPLICATION_NAME: &str = "keel-relay";

/// A pool's notification state.
#[derive(Debug)]
pub(crate) struct Notifier {
    opened: Instant,
    /// When this pool last sent a notification (ms since `opened`).
    last: AtomicU64,
    /// Whether a trailing notification is scheduled for the end of the current window.
    scheduled: AtomicBool,
    /// Whether a relay of another process listened at the last check, and when that was
    /// (ms since `opened`, `u64::MAX` before the first).
    others_listen: AtomicBool,
    checked: AtomicU64,
    /// The server's ids (backend pids) of this pool's own relays' listening connections.
    own: std::sync::Mutex<Vec<i32>>,
    /// Wakes this pool's own relays, in memory.
    local: tokio::sync::Notify,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Notifier {
            opened: Instant::now(),
            last: AtomicU64::new(0),
            scheduled: AtomicBool::new(false),
            others_listen: AtomicBool::new(true),
            checked: AtomicU64::new(u64::MAX),
            own: std::sync::Mutex::new(Vec::new()),
            local: tokio::sync::Notify::new(),
        }
    }

    fn millis(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn own(&self) -> std::sync::MutexGuard<'_, Vec<i32>> {
        self.own
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves when a commit on this pool leaves work for the relays; a relay on this
    /// pool listens to it beside the server's notifications.
    #[cfg(feature = "postgres")]
    pub(crate) async fn local(&self) {
        self.local.notified().await
    }
}

/// A relay's listening connection of this pool, known as its own while this lives.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub(crate) struct OwnListener<'a> {
    notifier: &'a Notifier,
    id: i32,
}

#[cfg(feature = "postgres")]
impl Drop for OwnListener<'_> {
    fn drop(&mut self) {
        let mut own = self.notifier.own();
        if let Some(at) = own.iter().position(|id| *id == self.id) {
            own.swap_remove(at);
        }
    }
}

impl<B: Backend> Database<B> {
    /// Records `id` (the server's id of a listening connection) as one of this pool's own
    /// relays, which are woken in memory and need no notification.
    #[cfg(feature = "postgres")]
    pub(crate) fn own_listener(&self, id: i32) -> OwnListener<'_> {
        let notifier = self.notifier();
        notifier.own().push(id);
        notifier.checked.store(u64::MAX, Ordering::Relaxed);
        OwnListener { notifier, id }
    }

    /// Wakes this pool's relays in memory, and other processes' relays, if any listens,
    /// with a notification, after a commit that left them work.
    pub(crate) async fn notify_relays(&self, conn: &mut PoolConnection<B>) {
        if !B::NOTIFIES {
            return;
        }
        let notifier = self.notifier();
        notifier.local.notify_waiters();
        if !self.others_listen(conn).await {
            return;
        }
        let now = notifier.millis();
        let last = notifier.last.load(Ordering::Relaxed);
        let may = now.saturating_sub(last) >= WINDOW_MS
            && notifier
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if may {
            B::notify_relays(conn).await;
        } else {
            self.notify_later();
        }
    }

    /// Whether a relay of another process listens, as last checked (checking again when
    /// the answer is older than [`LISTENERS_CHECK_MS`]).
    async fn others_listen(&self, conn: &mut PoolConnection<B>) -> bool {
        let notifier = self.notifier();
        let now = notifier.millis();
        let checked = notifier.checked.load(Ordering::Relaxed);
        let fresh = checked != u64::MAX && now.saturating_sub(checked) < LISTENERS_CHECK_MS;
        if fresh
            || notifier
                .checked
                .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return notifier.others_listen.load(Ordering::Relaxed);
        }
        let own = notifier.own().clone();
        let others = B::others_listen(conn, &own).await;
        notifier.others_listen.store(others, Ordering::Relaxed);
        others
    }

    /// A notification at the end of the current window, for the commits it holds.
    fn notify_later(&self) {
        let notifier = self.notifier();
        if notifier.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let db = self.clone();
        // At the end of the window of the last notification, not a whole window later.
        let last = notifier.last.load(Ordering::Relaxed);
        let wait = (last + WINDOW_MS).saturating_sub(notifier.millis());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait.min(WINDOW_MS))).await;
            let notifier = db.notifier();
            notifier.scheduled.store(false, Ordering::Release);
            notifier.last.store(notifier.millis(), Ordering::Relaxed);
            match db.pool().acquire().await {
                Ok(mut conn) => B::notify_relays(&mut conn).await,
                Err(error) => {
                    tracing::debug!(%error, "could not notify relays; they will find the rows when they poll")
                }
            }
        });
    }
}
