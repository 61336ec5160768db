//! The settings of group commit (see the module documentation of `group`, and
//! [`GroupCommit`]).

use std::time::Duration;

/// How units of work that run at the same time share one commit: they join one
/// transaction, take turns on its connection, and return after its `COMMIT`. The
/// dispatcher groups handlers' units of work (`DeliveryOptions::group_commit`); the
/// delivery guide (`docs/guide/delivery.md`, "Group commit") says what it buys and costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    pub(crate) max_members: usize,
    pub(crate) window: Duration,
    pub(crate) savepoints: bool,
    pub(crate) after_failure: Duration,
    pub(crate) lock_wait: Duration,
    pub(crate) alone_after_conflict: Duration,
}

impl GroupCommit {
    /// Each member in a savepoint: a failing member is rolled back alone, at one extra round
    /// trip per member and, on PostgreSQL, a subtransaction (see
    /// [`GroupCommit::optimistic`]). Up to [`GroupCommit::MEMBERS`] members, a
    /// [`GroupCommit::WINDOW`] under load.
    pub fn savepoints() -> Self {
        GroupCommit {
            max_members: Self::MEMBERS,
            window: Self::WINDOW,
            savepoints: true,
            after_failure: Duration::ZERO,
            lock_wait: Self::LOCK_WAIT,
            alone_after_conflict: Self::ALONE_AFTER_CONFLICT,
        }
    }

    /// No savepoints while members succeed: a failing member rolls the whole group back,
    /// and its other members run again, each alone (their steps run a second time); the
    /// groups opened during the next [`GroupCommit::SAVEPOINTS_AFTER_FAILURE`] (see
    /// [`GroupCommit::savepoints_after_failure`]) run their members in savepoints, so a
    /// handler that keeps failing undoes at most about one group a second. Up to
    /// [`GroupCommit::MEMBERS`] members, a [`GroupCommit::WINDOW`] under load. On SQLite
    /// members are always undone alone (a unit of work there is marked by a savepoint).
    ///
    /// A savepoint costs more than its round trip on PostgreSQL: each member's writes get a
    /// subtransaction id that every other transaction's snapshot carries while the group
    /// runs. In the `delivery` benchmark optimistic groups delivered up to a tenth more
    /// (`docs/benchmarks.md`).
    pub fn optimistic() -> Self {
        GroupCommit {
            max_members: Self::MEMBERS,
            window: Self::WINDOW,
            savepoints: false,
            after_failure: Self::SAVEPOINTS_AFTER_FAILURE,
            lock_wait: Self::LOCK_WAIT,
            alone_after_conflict: Self::ALONE_AFTER_CONFLICT,
        }
    }

    /// The default size of a group. A group's own round trips (`BEGIN`, then the done marks
    /// with `COMMIT`) are shared by its members, but members take turns on one connection,
    /// so a full group's last member waits for the others' statements. In the `delivery`
    /// benchmark (64 deliveries at once), groups of up to 32 delivered about a fifth more
    /// than groups of 8, and larger ones no more (`docs/benchmarks.md`).
    pub const MEMBERS: usize = 32;

    /// The default window (see [`GroupCommit::window`]). With units of work arriving
    /// steadily but not all at once, a group holds whoever arrived during its first
    /// member's steps, often one or two, and each pays a whole group's round trips and
    /// commit. In the `delivery` benchmark with 2 producers, groups that waited 1 ms
    /// before they began delivered about a quarter more events per second for about a
    /// quarter less machine time per event (2 ms did about as well, for twice the wait);
    /// with 4, a sixth more; with 8, where groups fill while their members run, about the
    /// same (`docs/benchmarks.md`). What it costs: under such a load, a unit of work's
    /// commit comes up to about this much later (Tokio's timers count whole
    /// milliseconds), plus the turns of the members its group gathered.
    pub const WINDOW: Duration = Duration::from_millis(1);

    /// How long after a member's failure optimistic groups run their members in
    /// savepoints by default (see [`GroupCommit::optimistic`]).
    pub const SAVEPOINTS_AFTER_FAILURE: Duration = Duration::from_secs(1);

    /// The default [`GroupCommit::lock_wait`]. A group holds the row locks its members
    /// took until it commits, so two groups at once that update the same rows (a counter,
    /// a tally) in different orders deadlock, and PostgreSQL breaks a deadlock only after
    /// `deadlock_timeout` (1 s by default), while every delivery behind both groups waits.
    /// A group of 32 members commits within a few tens of milliseconds here, so a longer
    /// wait is a conflict more often than a queue.
    pub const LOCK_WAIT: Duration = Duration::from_millis(100);

    /// The default [`GroupCommit::alone_after_conflict`]. In a run of 600 deliveries
    /// updating four rows, groups that kept forming after conflicts deadlocked 117 times;
    /// one conflict per such period costs a group's members one run each.
    pub const ALONE_AFTER_CONFLICT: Duration = Duration::from_secs(10);

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

    /// How long a group may wait for more members before it begins, while units of work
    /// keep coming several at a time: it waits when the group before it closed less than a
    /// window ago with more than one member. After a quiet moment, or after a group of one
    /// (a caller running units of work one after another, which waiting would only slow),
    /// it begins at once. A member that joins with a shorter window shortens the wait (the
    /// dispatcher gives none to deliveries with an ordering key, whose key's next one
    /// waits for their commit, and to those that start while its delivery slots are all
    /// taken), and a full group begins at once. The latency a unit of work may
    /// pay under load. Zero: a group begins at once, and takes whoever arrives while its
    /// members run. Default [`GroupCommit::WINDOW`].
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// When a group that waits for members from `now` begins (far off for a window too
    /// large to add).
    pub(crate) fn wait_until(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        now.checked_add(self.window)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
    }

    /// Whether a unit of work with these settings may join a group opened with `group`'s:
    /// the same but for the window, which each member brings.
    pub(crate) fn joins(&self, group: &GroupCommit) -> bool {
        GroupCommit {
            window: group.window,
            ..*self
        } == *group
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

    /// How long any statement of a group's transaction may wait for a lock on PostgreSQL
    /// (the transaction's `lock_timeout`, at most the database's own): past it, a member's
    /// statement fails with [`Error::LockTimeout`], which undoes that member as any failure
    /// does (with savepoints, that member alone; optimistically, the group) and is retried,
    /// and the group's own end (its done marks) fails the group, whose members run again
    /// alone. Either counts as a conflict ([`GroupCommit::alone_after_conflict`]). Default
    /// [`GroupCommit::LOCK_WAIT`]. Units of work with a lock timeout of their own do not
    /// join groups. On SQLite a group holds the only write lock, so no member waits for
    /// another's rows.
    ///
    /// [`Error::LockTimeout`]: crate::Error::LockTimeout
    #[must_use]
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait.max(Duration::from_millis(1));
        self
    }

    /// How long units of work run alone, each with its own transaction, after a member of
    /// a group failed on a conflict with another transaction (a deadlock, a lock wait past
    /// [`GroupCommit::lock_wait`], a serialization failure, a `NOWAIT` refusal, an
    /// optimistic version conflict), or a group's end waited past the lock wait: rows that
    /// several units of work update at once are better served by short transactions than
    /// by groups holding their locks (default [`GroupCommit::ALONE_AFTER_CONFLICT`]; zero:
    /// group again at once). Only on PostgreSQL: a SQLite group holds the only write lock,
    /// so its members meet no other transaction.
    #[must_use]
    pub fn alone_after_conflict(mut self, alone: Duration) -> Self {
        self.alone_after_conflict = alone;
        self
    }

    /// Whether members always run in savepoints ([`GroupCommit::savepoints`]).
    pub fn uses_savepoints(&self) -> bool {
        self.savepoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_settings_have_defaults_and_a_floor() {
        let settings = GroupCommit::optimistic();
        assert_eq!(settings.lock_wait, GroupCommit::LOCK_WAIT);
        assert_eq!(
            settings.alone_after_conflict,
            GroupCommit::ALONE_AFTER_CONFLICT
        );
        let set = settings
            .lock_wait(Duration::ZERO)
            .alone_after_conflict(Duration::ZERO);
        assert_eq!(
            set.lock_wait,
            Duration::from_millis(1),
            "a zero wait would mean none"
        );
        assert_eq!(set.alone_after_conflict, Duration::ZERO);
        assert!(
            !set.joins(&settings),
            "groups with other conflict settings are apart"
        );
    }
}
