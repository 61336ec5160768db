//! Group commit: units of work that run at the same time share one transaction and one
//! `COMMIT`.
//!
//! A database commits a bounded number of write transactions per second whoever sends
//! them; a handler's unit of work that writes one row pays a whole commit for it. Units of
//! work opted in with [`UnitOfWorkOptions::grouped`] (the dispatcher does it for handlers,
//! see `DeliveryOptions::group_commit`) join the *open group*: its members take turns on the
//! group's connection, each running its steps, its processed marker and its outbox write
//! inside the group's transaction, and the group commits once for all of them.
//!
//! Nothing changes for the code that opened the unit of work: its call returns only after
//! the group's commit, with the same receipt as alone. A member that fails is undone alone
//! (with [`GroupCommit::savepoints`], it runs in a savepoint rolled back on failure), or
//! undoes the whole group ([`GroupCommit::optimistic`]: no savepoint; the other members
//! then run again, each in a transaction of its own, which is what a retry would do
//! anyway). After a failure, optimistic groups run their members in savepoints for a while
//! ([`GroupCommit::savepoints_after_failure`]): failures come in runs (a partner down, a
//! bad deploy), and each would otherwise undo a group. A member cancelled mid-steps (a
//! timeout) leaves its transaction in an unknown state: the group's connection is closed,
//! and the others run again alone.
//!
//! A handler's processed marker (its delivery's done mark) is not written by each member:
//! the group marks its members' deliveries done in one statement per handler just before
//! `COMMIT`. A delivery found already done there (another process ran it meanwhile) undoes
//! the group, and its members run again alone, where the marker comes first and a delivery
//! already done does not run. Its steps may so have run once in the group, and committed
//! nothing.
//!
//! A group takes whoever arrives while its members run, and closes when it is full or as
//! soon as none is left running; then it commits. So groups grow with the load, but under a
//! steady trickle (units of work arriving one after another, not at once) each group would
//! hold one or two members and pay a whole commit for them. Hence the window: a group
//! opened less than a window after the previous one closed with several members waits up
//! to its window before it begins, gathering members ([`GroupCommit::window`]); one opened
//! after a quiet moment, or after a group of one (a caller running units of work one after
//! another), begins at once. It waits before `BEGIN`, holding no transaction, no lock and,
//! on SQLite, not the write lock.

mod end;
mod member;
mod settings;

use std::sync::Arc;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use tokio::sync::{Notify, OwnedMutexGuard, watch};

use keel_domain::EventId;

use crate::{Backend, Database, Error, Isolation, UnitOfWorkOptions};
use end::drive;
pub(crate) use member::Membership;
pub use settings::GroupCommit;

/// A database's groups (one per [`Database`] and its clones): the open one, if any, and
/// when a member last failed.
pub(crate) struct Groups<B: sqlx::Database>(std::sync::Mutex<GroupsState<B>>);

struct GroupsState<B: sqlx::Database> {
    open: Option<Arc<Group<B>>>,
    last_failure: Option<Instant>,
    /// When a member last failed on a conflict with another transaction.
    last_conflict: Option<Instant>,
    /// When the last group closed, and how many members it had: a group opened soon after
    /// one that gathered several waits for members.
    last_closed: Option<(tokio::time::Instant, usize)>,
}

impl<B: sqlx::Database> Default for Groups<B> {
    fn default() -> Self {
        Groups(std::sync::Mutex::new(GroupsState {
            open: None,
            last_failure: None,
            last_conflict: None,
            last_closed: None,
        }))
    }
}

impl<B: sqlx::Database> Groups<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupsState<B>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B: Backend> Groups<B> {
    /// A member's steps failed: optimistic groups opened for a while after run their
    /// members in savepoints ([`GroupCommit::savepoints_after_failure`]), and after a
    /// conflict units of work run alone ([`GroupCommit::alone_after_conflict`]).
    fn member_failed(&self, error: &Error) {
        let mut groups = self.lock();
        groups.last_failure = Some(Instant::now());
        groups.note_conflict(error);
    }

    /// A group's end failed on `error`: a conflict sends units of work alone as a
    /// member's does.
    fn end_failed(&self, error: &Error) {
        self.lock().note_conflict(error);
    }
}

impl<B: Backend> GroupsState<B> {
    /// Records `error` if it is a conflict with another transaction over the same rows,
    /// which a transaction holding its locks longer makes more likely. Not on a backend
    /// with one writer (SQLite), whose groups hold the only write lock and meet no other
    /// transaction.
    fn note_conflict(&mut self, error: &Error) {
        let conflict = matches!(
            error,
            Error::Deadlock(_)
                | Error::LockTimeout { .. }
                | Error::RowLocked { .. }
                | Error::SerializationFailure(_)
                | Error::VersionConflict { .. }
        );
        if conflict && !B::ONE_WRITER {
            self.last_conflict = Some(Instant::now());
        }
    }
}

/// One group: its transaction's connection, who is in it, and how it ended.
pub(crate) struct Group<B: sqlx::Database> {
    settings: GroupCommit,
    /// Whether its members run in savepoints: with [`GroupCommit::savepoints`], or for a
    /// while after a member failed.
    savepoints: bool,
    marker: uuid::Uuid,
    state: std::sync::Mutex<State>,
    changed: Notify,
    /// Wakes a waiting first member when the group should begin sooner.
    hurry: Notify,
    conn: Arc<tokio::sync::Mutex<Slot<B>>>,
    ended: watch::Sender<Option<Ended>>,
}

struct State {
    /// When the group begins: its members' earliest window's end (or at once).
    begins_at: tokio::time::Instant,
    joined: usize,
    /// Joined and not finished their steps (queued for the connection, or running).
    running: usize,
    closed: bool,
    undo: Option<Undo>,
    relay_work: bool,
    /// The deliveries its members processed, by handler: marked done before `COMMIT`.
    marks: Vec<(&'static str, Vec<EventId>)>,
}

/// Why a group cannot commit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// A member failed; `ROLLBACK` works.
    Rollback,
    /// The transaction's state is unknown (a member was cancelled mid-statement, or
    /// tampered with it): the connection is closed.
    Close,
}

/// The group's connection once its first member opened the transaction.
struct Slot<B: sqlx::Database> {
    conn: Option<PoolConnection<B>>,
    /// SQLite's process-wide write lock, held for the whole group.
    _writer: Option<OwnedMutexGuard<()>>,
    /// The last member recorded nothing and left its check ([`Store::verify`]) to the
    /// next round trip: the next member's begin, or the group's commit.
    ///
    /// [`Store::verify`]: crate::store::Store::verify
    unchecked: bool,
}

/// How a group ended, for its members waiting on it.
#[derive(Clone)]
enum Ended {
    Committed,
    /// Rolled back, or never opened: every member runs again alone.
    Undone,
    /// The connection was lost during `COMMIT`.
    Unknown(Arc<sqlx::Error>),
}

impl<B: Backend> Group<B> {
    /// The most members it takes: the settings', at most
    /// [`GroupCommit::MOST_SAVEPOINTS`] when they run in savepoints.
    fn max_members(&self) -> usize {
        if self.savepoints {
            self.settings.max_members.min(GroupCommit::MOST_SAVEPOINTS)
        } else {
            self.settings.max_members
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the group should begin: members join meanwhile (and queue for the
    /// connection, which the waiting member holds).
    async fn wait_for_members(&self) {
        loop {
            let hurried = self.hurry.notified();
            let begins_at = self.state().begins_at;
            if tokio::time::Instant::now() >= begins_at {
                return;
            }
            tokio::select! {
                () = hurried => {}
                () = tokio::time::sleep_until(begins_at) => {}
            }
        }
    }
}

/// Whether a unit of work with `options` may join a group: grouped, at the default
/// isolation, without a lock timeout of its own.
pub(crate) fn groupable(options: &UnitOfWorkOptions) -> Option<GroupCommit> {
    options
        .grouping
        .filter(|_| options.isolation == Isolation::default() && options.lock_timeout.is_none())
}

impl<B: Backend> Database<B> {
    /// Joins the open group, or opens one (and its driver) when there is none with room;
    /// `None` while units of work run alone after a conflict.
    fn join(&self, settings: GroupCommit) -> Option<Arc<Group<B>>> {
        let now = tokio::time::Instant::now();
        let mut groups = self.groups().lock();
        // A member failed on a conflict lately: units of work run alone for a while.
        if groups
            .last_conflict
            .is_some_and(|at| at.elapsed() < settings.alone_after_conflict)
        {
            return None;
        }
        if let Some(group) = groups.open.as_ref().filter(|g| settings.joins(&g.settings)) {
            let mut state = group.state();
            if !state.closed && state.joined < group.max_members() {
                state.joined += 1;
                state.running += 1;
                // A full group, or a member with less patience, begins it sooner.
                let begins_at = if state.joined >= group.max_members() {
                    now
                } else {
                    state.begins_at.min(settings.wait_until(now))
                };
                let sooner = begins_at < state.begins_at;
                state.begins_at = begins_at;
                drop(state);
                if sooner {
                    group.hurry.notify_one();
                }
                return Some(group.clone());
            }
        }
        // On SQLite members are undone alone anyway (`MARKS_WITH_SAVEPOINT`).
        let savepoints = settings.savepoints
            || (!B::MARKS_WITH_SAVEPOINT
                && groups
                    .last_failure
                    .is_some_and(|at| at.elapsed() < settings.after_failure));
        // Units of work keep coming, more than one at a time (a caller running them one
        // after another makes groups of one, and gains nothing by waiting): wait for more
        // before beginning.
        let steady = groups
            .last_closed
            .is_some_and(|(at, members)| members > 1 && at.elapsed() < settings.window);
        let group = Arc::new(Group {
            settings,
            savepoints,
            marker: crate::marker::new(),
            state: std::sync::Mutex::new(State {
                begins_at: if steady {
                    settings.wait_until(now)
                } else {
                    now
                },
                joined: 1,
                running: 1,
                closed: false,
                undo: None,
                relay_work: false,
                marks: Vec::new(),
            }),
            changed: Notify::new(),
            hurry: Notify::new(),
            conn: Arc::new(tokio::sync::Mutex::new(Slot {
                conn: None,
                _writer: None,
                unchecked: false,
            })),
            ended: watch::Sender::new(None),
        });
        groups.open = Some(group.clone());
        drop(groups);
        tokio::spawn(drive(self.clone(), group.clone()));
        Some(group)
    }
}
