//! The settings of group commit (see the module documentation of `group`).

use std::time::Duration;

/// How units of work that run at the same time share one commit (see the module
/// documentation of `group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    pub(crate) max_members: usize,
    pub(crate) window: Duration,
    pub(crate) savepoints: bool,
    pub(crate) after_failure: Duration,
}

impl GroupCommit {
    /// Each member in a savepoint: a failing member is rolled back alone, at one extra round
    /// trip per member and, on PostgreSQL, a subtransaction (see
    /// [`GroupCommit::optimistic`]). Up to [`GroupCommit::MEMBERS`] members, no window.
    pub fn savepoints() -> Self {
        GroupCommit {
            max_members: Self::MEMBERS,
            window: Duration::ZERO,
            savepoints: true,
            after_failure: Duration::ZERO,
        }
    }

    /// No savepoints while members succeed: a failing member rolls the whole group back,
    /// and its other members run again, each alone (their steps run a second time); the
    /// groups opened during the next [`GroupCommit::SAVEPOINTS_AFTER_FAILURE`] (see
    /// [`GroupCommit::savepoints_after_failure`]) run their members in savepoints, so a
    /// handler that keeps failing undoes at most about one group a second. Up to
    /// [`GroupCommit::MEMBERS`] members, no window. On SQLite members are always undone
    /// alone (a unit of work there is marked by a savepoint).
    ///
    /// A savepoint costs more than its round trip on PostgreSQL: each member's writes get a
    /// subtransaction id that every other transaction's snapshot carries while the group
    /// runs. In the `delivery` benchmark optimistic groups delivered up to a tenth more
    /// (`docs/benchmarks.md`).
    pub fn optimistic() -> Self {
        GroupCommit {
            max_members: Self::MEMBERS,
            window: Duration::ZERO,
            savepoints: false,
            after_failure: Self::SAVEPOINTS_AFTER_FAILURE,
        }
    }

    /// The default size of a group. A group's own round trips (`BEGIN`, then the done marks
    /// with `COMMIT`) are shared by its members, but members take turns on one connection,
    /// so a full group's last member waits for the others' statements. In the `delivery`
    /// benchmark (64 deliveries at once), groups of up to 32 delivered about a fifth more
    /// than groups of 8, and larger ones no more (`docs/benchmarks.md`).
    pub const MEMBERS: usize = 32;

    /// How long after a member's failure optimistic groups run their members in
    /// savepoints by default (see [`GroupCommit::optimistic`]).
    pub const SAVEPOINTS_AFTER_FAILURE: Duration = Duration::from_secs(1);

    /// The most members of a group that runs them in savepoints: PostgreSQL keeps 64
    /// subtransactions per transaction in shared memory, and beyond that every snapshot on
    /// the server slows down.
    pub const MOST_SAVEPOINTS: usize = 60;

    /// The most members a group takes (at least 1); with savepoints, at most
    /// [`GroupCommit::MOST_SAVEPOINTS`] (an optimistic group running its members in
    /// savepoints after a failure takes no more either). Members' savepoints are nested and
    /// kept until the group commits, so savepoints a handler opens itself share what is
    /// left.
    #[must_use]
    pub fn max_members(mut self, members: usize) -> Self {
        // The cap for savepoints is applied by each group, which knows whether it runs its
        // members in them.
        self.max_members = members.max(1);
        self
    }

    /// How long a group stays open for more members after its first one: the latency a
    /// unit of work may gain. Zero: a group closes as soon as no member is running.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How long after a member's failure an optimistic group's members run in savepoints
    /// (default [`GroupCommit::SAVEPOINTS_AFTER_FAILURE`]; zero: never). Without effect on
    /// [`GroupCommit::savepoints`], whose members always do.
    #[must_use]
    pub fn savepoints_after_failure(mut self, after_failure: Duration) -> Self {
        if !self.savepoints {
            self.after_failure = after_failure;
        }
        self
    }

    /// Whether members always run in savepoints ([`GroupCommit::savepoints`]).
    pub fn uses_savepoints(&self) -> bool {
        self.savepoints
    }
}
