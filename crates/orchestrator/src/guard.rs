//! The runtime backstop of "one unit of work, one connection".
//!
//! The closure of a unit of work only receives `&mut Tx`, so it cannot reach the pool
//! through Keel's API. It can still capture a clone of the [`Database`](crate::Database)
//! (or find one in a global). A task-local marker, set while the closure runs, makes every
//! framework connection request from inside fail at once, before the pool is touched,
//! instead of waiting for a connection that may never come.
//!
//! The marker is visible to everything the closure awaits in the same task (including
//! `join!`), but not to tasks started with `tokio::spawn` or `spawn_blocking`: those run
//! outside the unit of work by construction and cannot receive its `Tx`.

use std::future::Future;

use crate::Error;

tokio::task_local! {
    static UNIT_OF_WORK: &'static str;
}

/// Fails with [`Error::InsideUnitOfWork`] if called from inside a unit of work.
///
/// Other crates of the framework call it before anything that would take a connection
/// or release events; `action` completes the sentence "cannot … inside unit of work".
pub fn ensure_outside_unit_of_work(action: &'static str) -> Result<(), Error> {
    ensure_outside(action)
}

pub(crate) fn ensure_outside(action: &'static str) -> Result<(), Error> {
    match UNIT_OF_WORK.try_with(|name| *name) {
        Ok(unit_of_work) => Err(Error::InsideUnitOfWork {
            unit_of_work,
            action,
        }),
        Err(_) => Ok(()),
    }
}

/// Runs `future` marked as the body of unit of work `name`.
pub(crate) async fn inside<F: Future>(name: &'static str, future: F) -> F::Output {
    UNIT_OF_WORK.scope(name, future).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_marker_is_set_only_inside() {
        assert!(ensure_outside("acquire a connection").is_ok());
        let err = inside("debit", async { ensure_outside("acquire a connection") })
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("debit") && text.contains("acquire a connection"),
            "{text}"
        );
        assert!(ensure_outside("acquire a connection").is_ok());
    }
}
