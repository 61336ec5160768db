//! A group's end: it closes, then commits or rolls back, and tells its members.

use std::sync::Arc;

use super::{Ended, Group, Slot, Undo};
use crate::store::GroupEnd;
use crate::{Backend, Database, Error};

/// Closes `group` when it is full, or when no member runs, or as soon as a member undid it;
/// then commits or rolls back, and tells the members.
pub(super) async fn drive<B: Backend>(db: Database<B>, group: Arc<Group<B>>) {
    loop {
        let changed = group.changed.notified();
        {
            // The groups' lock first, as when joining: a group opened next sees this one's
            // close.
            let mut groups = db.groups().lock();
            let mut state = group.state();
            let full = state.joined >= group.max_members();
            if !state.closed && (full || state.undo.is_some() || state.running == 0) {
                state.closed = true;
                // An undone group's members run again alone: they gathered nothing.
                let members = if state.undo.is_some() {
                    0
                } else {
                    state.joined
                };
                groups.last_closed = Some((tokio::time::Instant::now(), members));
            }
            if state.closed && (state.running == 0 || state.undo.is_some()) {
                break;
            }
        }
        changed.await;
    }
    // Members queued for the connection take their turn first (the lock is fair); they see
    // an undone group and leave.
    let mut slot = group.conn.clone().lock_owned().await;
    let unchecked = slot.unchecked;
    let (mut undo, relay_work, members, marks) = {
        let mut state = group.state();
        let marks = std::mem::take(&mut state.marks);
        (state.undo, state.relay_work, state.joined, marks)
    };
    let ended = match (slot.conn.take(), undo) {
        (None, _) => Ended::Undone,
        (Some(mut conn), Some(Undo::Close)) => {
            conn.close_on_drop();
            Ended::Undone
        }
        (Some(mut conn), Some(Undo::Rollback)) => {
            if B::rollback(&mut conn).await.is_err() {
                conn.close_on_drop();
            }
            Ended::Undone
        }
        (Some(mut conn), None) => {
            match B::commit_group(&mut conn, group.marker, &marks, unchecked).await {
                Ok(GroupEnd::Committed) => {
                    if relay_work {
                        db.notify_relays(&mut conn).await;
                    }
                    Ended::Committed
                }
                // Its members run again alone, where a delivery done already does not run.
                Ok(GroupEnd::AlreadyDone) => {
                    undo = Some(Undo::Rollback);
                    if B::rollback(&mut conn).await.is_err() {
                        conn.close_on_drop();
                    }
                    Ended::Undone
                }
                Err(Error::ConnectionLost(source)) => {
                    conn.close_on_drop();
                    Ended::Unknown(Arc::new(source))
                }
                // Replaced (members check it; never expected) or refused: nothing committed.
                Ok(GroupEnd::Replaced) => {
                    conn.close_on_drop();
                    Ended::Undone
                }
                Err(error) => {
                    db.groups().end_failed(&error);
                    undo = Some(Undo::Close);
                    conn.close_on_drop();
                    Ended::Undone
                }
            }
        }
    };
    match ended {
        Ended::Committed => crate::telemetry::group_commit(members, true),
        Ended::Undone if undo.is_some() => crate::telemetry::group_commit(members, false),
        _ => {}
    }
    *slot = Slot {
        conn: None,
        _writer: None,
        unchecked: false,
    };
    drop(slot);
    group.ended.send_replace(Some(ended));
}
