//! A member of a group: its turn on the group's connection, its steps, and what the
//! group's end came to for it.

use std::sync::Arc;

use super::{Ended, Group, GroupCommit, Slot, Undo};
use crate::{Backend, Database, Error, Isolation, Tx, TxFn, UnitOfWorkOptions};

/// What a member's attempt in a group came to.
pub(crate) enum Membership<T> {
    /// The group committed with this member, or the member failed (its error).
    Ran(Result<T, Error>),
    /// No group was joined (units of work run alone after a conflict), or the group did not
    /// commit: run the attempt alone.
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

impl<B: Backend> Database<B> {
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
        let Some(group) = self.join(settings) else {
            return Membership::Undone;
        };
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
        // The member that opens the transaction is begun with it, once the group's window
        // (if it waits) has passed.
        let opener = slot.conn.is_none();
        if opener {
            group.wait_for_members().await;
            match self
                .open_group_transaction(&settings, options, group.marker, group.savepoints)
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
        let outgoing = self.outgoing(&events, &commands, (group.marker, Isolation::default()));
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
                self.groups().member_failed(&error);
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
                let token = outgoing
                    .lease
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
        settings: &GroupCommit,
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
        // Groupable options: the default isolation, no lock timeout of their own. Where
        // members may wait for each other's rows, the group waits for a lock briefly.
        let conn = if B::ONE_WRITER {
            self.begun(options, None, marker, Some(savepoints)).await?
        } else {
            let wait = settings.lock_wait.min(self.options().lock_timeout);
            let options = options.clone().lock_timeout(wait);
            self.begun(&options, None, marker, Some(savepoints)).await?
        };
        Ok(Slot {
            conn: Some(conn),
            _writer: writer,
            unchecked: false,
        })
    }
}
