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
//! A group closes when it is full or when its window has passed and no member is running;
//! then it commits. With the default window (none), a group takes whoever arrives while its
//! members run, and closes as soon as none is left: a lone unit of work is not delayed, and
//! groups grow with the load.

mod end;
mod settings;

use std::sync::Arc;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use tokio::sync::{Notify, OwnedMutexGuard, watch};

use keel_domain::EventId;

use crate::outbox::Outgoing;
use crate::{Backend, Database, Error, Isolation, Tx, TxFn, UnitOfWorkOptions};
use end::drive;
pub use settings::GroupCommit;

/// A database's groups (one per [`Database`] and its clones): the open one, if any, and
/// when a member last failed.
pub(crate) struct Groups<B: sqlx::Database>(std::sync::Mutex<GroupsState<B>>);

struct GroupsState<B: sqlx::Database> {
    open: Option<Arc<Group<B>>>,
    last_failure: Option<Instant>,
}

impl<B: sqlx::Database> Default for Groups<B> {
    fn default() -> Self {
        Groups(std::sync::Mutex::new(GroupsState {
            open: None,
            last_failure: None,
        }))
    }
}

impl<B: sqlx::Database> Groups<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupsState<B>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A member's steps failed: optimistic groups opened for a while after run their
    /// members in savepoints ([`GroupCommit::savepoints_after_failure`]).
    fn member_failed(&self) {
        self.lock().last_failure = Some(Instant::now());
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
    conn: Arc<tokio::sync::Mutex<Slot<B>>>,
    ended: watch::Sender<Option<Ended>>,
}

#[derive(Default)]
struct State {
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

/// What a member's attempt in a group came to.
pub(crate) enum Membership<T> {
    /// The group committed with this member, or the member failed (its error).
    Ran(Result<T, Error>),
    /// The group did not commit: run the attempt alone.
    Undone,
}

/// A member's place in its group; leaving it (however the member's future ends) tells the
/// group, and a member cancelled while running its steps spoils the group's transaction.
struct Member<B: Backend> {
    group: Arc<Group<B>>,
    working: bool,
    left: bool,
}

impl<B: Backend> Member<B> {
    fn leave(&mut self, undo: Option<Undo>) {
        if self.left {
            return;
        }
        self.left = true;
        let mut state = self.group.state();
        state.running -= 1;
        if let Some(undo) = undo {
            state.undo = Some(match state.undo {
                Some(Undo::Close) => Undo::Close,
                _ => undo,
            });
        }
        // The group's driver waits for no member to be running, or for an undo; waking it
        // for every member that leaves would cost a task switch each.
        let wake = state.running == 0 || state.undo.is_some();
        drop(state);
        if wake {
            self.group.changed.notify_one();
        }
    }
}

impl<B: Backend> Drop for Member<B> {
    fn drop(&mut self) {
        let undo = self.working.then_some(Undo::Close);
        self.leave(undo);
    }
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
}

/// Whether a unit of work with `options` may join a group: grouped, at the default
/// isolation, without a lock timeout of its own.
pub(crate) fn groupable(options: &UnitOfWorkOptions) -> Option<GroupCommit> {
    options
        .grouping
        .filter(|_| options.isolation == Isolation::default() && options.lock_timeout.is_none())
}

impl<B: Backend> Database<B> {
    /// Joins the open group, or opens one (and its driver) when there is none with room.
    fn join(&self, settings: GroupCommit) -> Arc<Group<B>> {
        let mut groups = self.groups().lock();
        if let Some(group) = groups.open.as_ref().filter(|g| g.settings == settings) {
            let mut state = group.state();
            if !state.closed && state.joined < group.max_members() {
                state.joined += 1;
                state.running += 1;
                drop(state);
                return group.clone();
            }
        }
        // On SQLite members are undone alone anyway (`MARKS_WITH_SAVEPOINT`).
        let savepoints = settings.savepoints
            || (!B::MARKS_WITH_SAVEPOINT
                && groups
                    .last_failure
                    .is_some_and(|at| at.elapsed() < settings.after_failure));
        let group = Arc::new(Group {
            settings,
            savepoints,
            marker: crate::marker::new(),
            state: std::sync::Mutex::new(State {
                joined: 1,
                running: 1,
                ..State::default()
            }),
            changed: Notify::new(),
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
        group
    }

    /// One attempt of a unit of work as a member of a group.
    pub(crate) async fn grouped_attempt<T, F>(
        &self,
        settings: GroupCommit,
        options: &UnitOfWorkOptions,
        attempt: u32,
        steps: &mut F,
    ) -> Membership<(T, Vec<keel_domain::Envelope>, Option<uuid::Uuid>)>
    where
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        let group = self.join(settings);
        let mut member = Member {
            group: group.clone(),
            working: false,
            left: false,
        };
        let mut slot = group.conn.clone().lock_owned().await;
        if group.state().undo.is_some() {
            member.leave(None);
            return Membership::Undone;
        }
        // The member that opens the transaction is begun with it.
        let opener = slot.conn.is_none();
        if opener {
            match self
                .open_group_transaction(options, group.marker, group.savepoints)
                .await
            {
                Ok(opened) => *slot = opened,
                Err(error) => {
                    member.leave(Some(Undo::Rollback));
                    return Membership::Ran(Err(error));
                }
            }
        }
        let unchecked = std::mem::take(&mut slot.unchecked);
        let Some(conn) = slot.conn.as_mut() else {
            return Membership::Undone;
        };
        member.working = true;
        let savepoint = group.savepoints || B::MARKS_WITH_SAVEPOINT;
        if !opener {
            match B::member_begin(conn, group.savepoints, unchecked).await {
                Ok(true) => {}
                // The member before this one ended the transaction: nothing of the group
                // commits, and each member runs again alone (that one fails there).
                Ok(false) => {
                    member.working = false;
                    member.leave(Some(Undo::Close));
                    return Membership::Undone;
                }
                Err(error) => {
                    member.working = false;
                    member.leave(Some(Undo::Rollback));
                    return Membership::Ran(Err(error));
                }
            }
        }
        // The same steps as alone (`transaction.rs`), but the processed marker, which the
        // group writes for all its members before it commits: the steps, the check that
        // the transaction is still the group's, the outbox.
        let (outcome, events, commands) = self.run_steps(conn, options, attempt, steps).await;
        let replaced = || Error::TransactionReplaced {
            unit_of_work: options.name,
        };
        let lease = self.fast_path_lease();
        let outgoing = Outgoing {
            events: &events,
            commands: &commands,
            routing: self.routing(),
            lease,
            marker: Some((group.marker, Isolation::default())),
        };
        let writes = !events.is_empty() || !commands.is_empty();
        // `None`: the steps ended or replaced the group's transaction.
        let checked = match outcome {
            // The outbox write checks the transaction before writing anything.
            Ok(value) if writes => B::write_outbox(conn, &outgoing)
                .await
                .map(|kept| kept.then_some(value)),
            // Checked in the group's next round trip, which writes nothing before the check.
            Ok(value) => Ok(Some(value)),
            Err(error) => Err(error),
        };
        let unchecked = matches!(checked, Ok(Some(_))) && !writes;
        let value = match checked {
            Ok(Some(value)) => value,
            Ok(None) => {
                member.working = false;
                member.leave(Some(Undo::Close));
                return Membership::Ran(Err(replaced()));
            }
            Err(error) => {
                self.groups().member_failed();
                // Undone alone in its savepoint; without one, it undoes the group.
                let undo = if savepoint {
                    B::member_rollback(conn).await.err().map(|_| Undo::Rollback)
                } else {
                    Some(Undo::Rollback)
                };
                member.working = false;
                member.leave(undo);
                return Membership::Ran(Err(error));
            }
        };
        member.working = false;
        slot.unchecked = unchecked;
        {
            let mut state = group.state();
            if writes && outgoing.leaves_for_relay() {
                state.relay_work = true;
            }
            if let Some((event_ids, handler)) = &options.processes {
                match state.marks.iter_mut().find(|(h, _)| h == handler) {
                    Some((_, ids)) => ids.extend_from_slice(event_ids),
                    None => state.marks.push((handler, event_ids.clone())),
                }
            }
        }
        member.leave(None);
        drop(slot);
        let mut ended = group.ended.subscribe();
        let ended = match ended.wait_for(Option::is_some).await {
            Ok(ended) => ended.clone(),
            Err(_) => None,
        };
        match ended {
            Some(Ended::Committed) => {
                if writes
                    && outgoing.leaves_for_relay()
                    && let Some(routing) = self.routing()
                {
                    routing.left_for_relay();
                }
                let token = lease
                    .filter(|_| writes && outgoing.reserves())
                    .map(|(token, _)| token);
                Membership::Ran(Ok((value, events, token)))
            }
            Some(Ended::Unknown(source)) => Membership::Ran(Err(Error::CommitOutcomeUnknown {
                unit_of_work: options.name,
                source: sqlx::Error::Io(std::io::Error::other(source.to_string())),
            })),
            Some(Ended::Undone) | None => Membership::Undone,
        }
    }

    /// The group's connection, its transaction and its first member begun (and, on SQLite,
    /// the write lock).
    async fn open_group_transaction(
        &self,
        options: &UnitOfWorkOptions,
        marker: uuid::Uuid,
        savepoints: bool,
    ) -> Result<Slot<B>, Error> {
        let writer = if B::ONE_WRITER {
            let wait = self.options().lock_timeout;
            let guard = tokio::time::timeout(wait, self.writer_owned())
                .await
                .map_err(|_| Error::LockTimeout {
                    detail: format!(
                        "the write lock was not granted within {} ms to a group of units of work",
                        wait.as_millis()
                    ),
                })?;
            Some(guard)
        } else {
            None
        };
        // Groupable options: the default isolation, no lock timeout of their own.
        let conn = self.begun(options, None, marker, Some(savepoints)).await?;
        Ok(Slot {
            conn: Some(conn),
            _writer: writer,
            unchecked: false,
        })
    }
}
