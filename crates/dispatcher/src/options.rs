//! How deliveries run: leases, timeouts, the relay's pace, retention.

use std::time::Duration;

use keel_orchestrator::GroupCommit;

/// Settings of event delivery, for the fast path and the relay.
///
/// ```
/// # mod keel { pub use keel_dispatcher::DeliveryOptions; }
/// use std::time::Duration;
/// use keel::DeliveryOptions;
///
/// let options = DeliveryOptions::default()
///     .handler_timeout(Duration::from_secs(10))
///     .lease(Duration::from_secs(20))
///     .poll_interval(Duration::from_millis(100));
/// assert_eq!(options.lease_duration(), Duration::from_secs(20));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryOptions {
    pub(crate) lease: Duration,
    pub(crate) handler_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) batch_size: u32,
    pub(crate) max_in_flight: usize,
    pub(crate) claimers: usize,
    pub(crate) fast_path: bool,
    pub(crate) retention: Option<Duration>,
    pub(crate) dead_retention: Option<Duration>,
    pub(crate) purge_batch: u32,
    pub(crate) purge_every: Duration,
    pub(crate) group_commit: Option<GroupCommit>,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            lease: Duration::from_secs(60),
            handler_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            batch_size: 250,
            max_in_flight: 64,
            claimers: 4,
            fast_path: true,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            dead_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            purge_batch: 5_000,
            purge_every: Duration::from_secs(60),
            group_commit: group_commit_from_env(),
        }
    }
}

/// The environment variable that sets [`DeliveryOptions::group_commit`]'s default:
/// `off`, `savepoints` or `optimistic`.
pub(crate) const GROUP_COMMIT_VAR: &str = "KEEL_GROUP_COMMIT";

/// The environment variable that sets the default group commit's window, in whole
/// milliseconds ([`GroupCommit::window`]; `0`: groups never wait for members).
pub(crate) const GROUP_WINDOW_VAR: &str = "KEEL_GROUP_COMMIT_WINDOW_MS";

/// The default group commit, unless [`GROUP_COMMIT_VAR`] or [`GROUP_WINDOW_VAR`] say
/// otherwise.
fn group_commit_from_env() -> Option<GroupCommit> {
    group_commit_from(
        std::env::var(GROUP_COMMIT_VAR).ok().as_deref(),
        std::env::var(GROUP_WINDOW_VAR).ok().as_deref(),
    )
}

/// The group commit that the environment's `mode` and `window_ms` describe; a value that
/// cannot be read is ignored, with a warning.
fn group_commit_from(mode: Option<&str>, window_ms: Option<&str>) -> Option<GroupCommit> {
    let default = GroupCommit::optimistic();
    let grouping = match mode.map(|m| m.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => default,
        Some("off" | "none") => return None,
        Some("savepoints") => GroupCommit::savepoints(),
        Some("optimistic") => GroupCommit::optimistic(),
        Some(other) => {
            tracing::warn!(
                value = other,
                "{GROUP_COMMIT_VAR} is not one of off, savepoints, optimistic; ignored"
            );
            default
        }
    };
    match window_ms.map(str::trim).filter(|w| !w.is_empty()) {
        None => Some(grouping),
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) => Some(grouping.window(Duration::from_millis(ms))),
            Err(_) => {
                tracing::warn!(
                    value = ms,
                    "{GROUP_WINDOW_VAR} is not a whole number of milliseconds; ignored"
                );
                Some(grouping)
            }
        },
    }
}

impl DeliveryOptions {
    /// How long a claimed delivery is reserved for the process that claimed it. If that
    /// process dies, another relay delivers it once the lease has expired. Keep it longer
    /// than the handler timeout (it is raised to twice the timeout if shorter).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long one handler call may run before it counts as a failed attempt.
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = timeout;
        self
    }

    /// How often an idle relay looks for due deliveries (PostgreSQL relays are also woken
    /// by `NOTIFY`).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How many deliveries a relay claims per query (default 250). Claimed deliveries wait
    /// in the relay for a free slot (see [`max_in_flight`](Self::max_in_flight)), under
    /// their lease: one batch beyond the slots is claimed ahead, or, when handlers are fast,
    /// what the slots get through during four claims' round trips, up to 8 batches; a
    /// claim then takes up to a quarter of that (2 batches at most).
    #[must_use]
    pub fn batch_size(mut self, size: u32) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// How many deliveries one relay runs at once.
    #[must_use]
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// How many claim loops a PostgreSQL relay runs at once (default 4). A claim costs the
    /// server per row, so a deep backlog drains faster with claims running side by side;
    /// `SKIP LOCKED` keeps them apart. Only the first loop wakes for commits and polls; the
    /// others wake when a loop claimed a full batch, so an idle relay costs one claim per
    /// wake-up whatever this number. SQLite relays, relays that handle commands (claimed
    /// key by key) and workers with a message limit run one.
    #[must_use]
    pub fn claimers(mut self, claimers: usize) -> Self {
        self.claimers = claimers.max(1);
        self
    }

    /// Whether this process delivers the events of its own commits at once (`true`, the
    /// default) or leaves everything to relays.
    #[must_use]
    pub fn fast_path(mut self, enabled: bool) -> Self {
        self.fast_path = enabled;
        self
    }

    /// How long finished deliveries are kept before the relay purges them (`None`: never).
    #[must_use]
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// How long dead deliveries stay in the dead letter before the relay purges them, with
    /// their history (`None`: until retried or discarded). Default 30 days: an event nobody
    /// handles, or a delivery nobody retried, does not stay forever.
    #[must_use]
    pub fn dead_retention(mut self, retention: Option<Duration>) -> Self {
        self.dead_retention = retention;
        self
    }

    /// Rows removed per purge statement, and how often the relay purges.
    #[must_use]
    pub fn purge(mut self, batch: u32, every: Duration) -> Self {
        self.purge_batch = batch.max(1);
        self.purge_every = every;
        self
    }

    /// Whether handlers' units of work that run at the same time share one transaction
    /// and one commit ([`GroupCommit`]; `None`: each commits alone). A handler's unit of
    /// work still returns only after its commit, and effects stay once per event; what a
    /// group costs is latency (under a steady load up to its window, and the turns of the
    /// members before it) and row locks held until the group commits: two groups updating
    /// the same rows (a counter) would deadlock, so a member waits for a row lock only
    /// briefly ([`GroupCommit::lock_wait`]), and after such a conflict units of work run
    /// alone for a while ([`GroupCommit::alone_after_conflict`]). Deliveries with an
    /// ordering key never wait for a window (their key's next one waits for their
    /// commit), nor those that start while every slot of
    /// [`max_in_flight`](Self::max_in_flight) is taken.
    ///
    /// Default: [`GroupCommit::optimistic()`] (no savepoints while members succeed, in
    /// savepoints for a second after one fails, a [`GroupCommit::WINDOW`] under load),
    /// unless the environment variable `KEEL_GROUP_COMMIT` says `off`, `savepoints` or
    /// `optimistic`; `KEEL_GROUP_COMMIT_WINDOW_MS` sets its window (`0`: none). Turn it off for
    /// handlers whose steps wait on something slow inside their unit of work.
    #[must_use]
    pub fn group_commit(mut self, grouping: Option<GroupCommit>) -> Self {
        self.group_commit = grouping;
        self
    }

    /// The group commit in effect (see [`DeliveryOptions::group_commit`]).
    pub fn grouping(&self) -> Option<GroupCommit> {
        self.group_commit
    }

    /// The effective lease: at least twice the handler timeout.
    pub fn lease_duration(&self) -> Duration {
        self.lease.max(self.handler_timeout * 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_sets_the_mode_and_the_window() {
        assert_eq!(
            group_commit_from(None, None),
            Some(GroupCommit::optimistic())
        );
        assert_eq!(group_commit_from(Some(" OFF "), Some("5")), None);
        assert_eq!(
            group_commit_from(Some("savepoints"), None),
            Some(GroupCommit::savepoints())
        );
        assert_eq!(
            group_commit_from(None, Some("0")),
            Some(GroupCommit::optimistic().window(Duration::ZERO))
        );
        assert_eq!(
            group_commit_from(Some("savepoints"), Some(" 5 ")),
            Some(GroupCommit::savepoints().window(Duration::from_millis(5)))
        );
        // Unreadable values are ignored.
        assert_eq!(
            group_commit_from(Some("sometimes"), Some("1.5ms")),
            Some(GroupCommit::optimistic())
        );
        assert_eq!(
            group_commit_from(Some("savepoints"), Some("soon")),
            Some(GroupCommit::savepoints())
        );
    }
}
