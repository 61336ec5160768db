//! The settings of group commit (see the module documentation of `group`).

use std::time::Duration;

/// How units of work that run at the same time share one commit (see the module
/// documentation of `group`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    pub(crate) max_members: usize,
    pub(crate) window: Duration,
    pub(crate) savepoints: bool,
}

impl GroupCommit {
    /// Each member in a savepoint: a failing member is rolled back alone, at one extra round
    /// trip per member. Up to [`GroupCommit::MEMBERS`] members, no window.
    pub fn savepoints() -> Self {
        GroupCommit {
            max_members: Self::MEMBERS,
            window: Duration::ZERO,
            savepoints: true,
        }
    }

    /// No savepoints: a failing member rolls the whole group back, and its other members
    /// run again, each alone. Up to [`GroupCommit::MEMBERS`] members, no window.
    pub fn optimistic() -> Self {
        GroupCommit {
            max_members: Self::MEMBERS,
            window: Duration::ZERO,
            savepoints: false,
        }
    }

    /// The default size of a group. A group's own round trips (`BEGIN`, then the done marks
    /// with `COMMIT`) are shared by its members, but members take turns on one connection,
    /// so a full group's last member waits for the others' statements. In the `delivery`
    /// benchmark (64 deliveries at once), groups of up to 32 delivered about a fifth more
    /// than groups of 8, and larger ones no more (`docs/benchmarks.md`).
    pub const MEMBERS: usize = 32;

    /// The most members a group takes (at least 1); with savepoints, at most 60
    /// (PostgreSQL keeps 64 subtransactions per transaction in shared memory; beyond that
    /// every snapshot on the server slows down). Members' savepoints are nested and kept
    /// until the group commits, so savepoints a handler opens itself share what is left.
    #[must_use]
    pub fn max_members(mut self, members: usize) -> Self {
        let cap = if self.savepoints { 60 } else { usize::MAX };
        self.max_members = members.clamp(1, cap);
        self
    }

    /// How long a group stays open for more members after its first one: the latency a
    /// unit of work may gain. Zero: a group closes as soon as no member is running.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Whether members run in savepoints.
    pub fn uses_savepoints(&self) -> bool {
        self.savepoints
    }
}
