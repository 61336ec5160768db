//! One attempt of a unit of work: a connection, a transaction marked at `BEGIN`, the steps,
//! the outbox write, and a commit of that very transaction, or a rollback.

use sqlx::pool::PoolConnection;

use keel_domain::Envelope;

use crate::outbox::Outgoing;
use crate::{Backend, Database, Error, Tx, TxFn, UnitOfWorkOptions, guard};

impl<B: Backend> Database<B> {
    /// One attempt: a fresh connection and transaction, the steps, then commit or rollback.
    pub(crate) async fn attempt<T, F>(
        &self,
        options: &UnitOfWorkOptions,
        attempt: u32,
        steps: &mut F,
    ) -> Result<(T, Vec<Envelope>, Option<uuid::Uuid>), Error>
    where
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        let holding = self.hold(options.name);
        if let Some(settings) = crate::group::groupable(options) {
            match self
                .grouped_attempt(settings, options, attempt, steps)
                .await
            {
                crate::group::Membership::Ran(result) => return result,
                // No group (after a conflict), or it did not commit: this attempt runs alone.
                crate::group::Membership::Undone => {}
            }
        }
        let _writer = if B::ONE_WRITER {
            let wait = options.lock_timeout.unwrap_or(self.options().lock_timeout);
            let guard = tokio::time::timeout(wait, self.writer().lock())
                .await
                .map_err(|_| Error::LockTimeout {
                    detail: format!(
                        "the write lock was not granted within {} ms; units of work of this \
                         process holding or waiting for it: {}",
                        wait.as_millis(),
                        names(&self.holder_names(Some(holding.id())))
                    ),
                })?;
            Some(guard)
        } else {
            None
        };
        let marker = crate::marker::new();
        let conn = self
            .begun(options, Some(holding.id()), marker, None)
            .await?;
        let mut open = Open { conn, ended: false };
        let outcome = self
            .transaction(&mut open, marker, options, attempt, steps)
            .await;
        if options.lock_timeout.is_some()
            && open.ended
            && let Err(error) = B::after_end(&mut open.conn, self.options()).await
        {
            tracing::warn!(%error, "could not restore the connection's defaults; it is closed");
            open.ended = false;
        }
        outcome
    }

    /// A pooled connection with the unit of work's transaction begun on it, marked with
    /// `marker`. The connection is taken untested: the `BEGIN` tests it, and when it finds
    /// the connection lost (a server restart, an operator's terminate), nothing began, so
    /// it is closed and the transaction begun on a tested connection instead (see the
    /// module documentation of `pool`). `group`: see [`Store::begin`].
    pub(crate) async fn begun(
        &self,
        options: &UnitOfWorkOptions,
        holder: Option<u64>,
        marker: uuid::Uuid,
        group: Option<bool>,
    ) -> Result<PoolConnection<B>, Error> {
        let mut tested = false;
        loop {
            let acquired = if tested {
                self.pool().acquire().await
            } else {
                crate::pool::acquire_untested(self.pool()).await
            };
            let mut conn = match acquired {
                Ok(conn) => conn,
                Err(error) => return Err(self.exhausted(options.name, holder, error).await),
            };
            let begun = match options.lock_timeout {
                Some(timeout) => B::before_begin(&mut conn, timeout).await,
                None => Ok(()),
            };
            let begun = match begun {
                Ok(()) => {
                    B::begin(
                        &mut conn,
                        options.isolation,
                        options.lock_timeout,
                        marker,
                        group,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            match begun {
                Ok(()) => return Ok(conn),
                Err(Error::ConnectionLost(error)) if !tested => {
                    tracing::debug!(%error, "a pooled connection was lost; beginning on another");
                    conn.close_on_drop();
                    tested = true;
                }
                Err(error) => {
                    conn.close_on_drop();
                    return Err(error);
                }
            }
        }
    }

    /// The transaction of one attempt, begun with `marker`: the steps, the outbox, then
    /// commit or rollback. Commits only the transaction it began, on the connection it
    /// began it on.
    async fn transaction<T, F>(
        &self,
        open: &mut Open<B>,
        marker: uuid::Uuid,
        options: &UnitOfWorkOptions,
        attempt: u32,
        steps: &mut F,
    ) -> Result<(T, Vec<Envelope>, Option<uuid::Uuid>), Error>
    where
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        let outcome = match &options.processes {
            Some((event_ids, handler)) => {
                mark_processed::<B>(&mut open.conn, event_ids, handler).await
            }
            None => Ok(()),
        };
        let (outcome, events, commands) = match outcome {
            Ok(()) => {
                self.run_steps(&mut open.conn, options, attempt, steps)
                    .await
            }
            Err(error) => (Err(error), Vec::new(), Vec::new()),
        };
        let replaced = || Error::TransactionReplaced {
            unit_of_work: options.name,
        };
        let writes = !events.is_empty() || !commands.is_empty();
        // With something to write, the outbox write checks the transaction (below).
        let outcome = match outcome {
            Ok(value) if !writes => match B::verify(&mut open.conn, marker).await {
                Ok(true) => Ok(value),
                Ok(false) => return Err(self.abandon(open, replaced()).await),
                Err(error) => Err(error),
            },
            other => other,
        };
        let outgoing = self.outgoing(&events, &commands, (marker, options.isolation));
        let mut verified = false;
        let outcome = match outcome {
            Ok(value) if writes => match B::write_outbox(&mut open.conn, &outgoing).await {
                Ok(true) => {
                    verified = true;
                    Ok(value)
                }
                Ok(false) => return Err(self.abandon(open, replaced()).await),
                Err(error) => Err(error),
            },
            other => other,
        };
        let value = match outcome {
            Ok(value) => value,
            Err(error) => {
                match B::rollback(&mut open.conn).await {
                    Ok(()) => open.ended = true,
                    Err(rollback) => {
                        tracing::warn!(%rollback, "rollback failed; the connection is closed")
                    }
                }
                return Err(error);
            }
        };
        match B::commit(&mut open.conn, marker, options.isolation, verified).await {
            Ok(true) => open.ended = true,
            Ok(false) => return Err(self.abandon(open, replaced()).await),
            // A database's refusal ends the transaction; a lost connection leaves its
            // outcome unknown (never retried), and the connection is closed.
            Err(Error::ConnectionLost(source)) => {
                return Err(Error::CommitOutcomeUnknown {
                    unit_of_work: options.name,
                    source,
                });
            }
            Err(error) => {
                open.ended = true;
                return Err(error);
            }
        }
        let reserved = writes && outgoing.reserves();
        if writes && outgoing.leaves_for_relay() {
            self.after_commit(&mut open.conn, true).await;
        }
        let token = outgoing.lease.filter(|_| reserved).map(|(token, _)| token);
        Ok((value, events, token))
    }

    /// The steps on `conn`, inside the unit of work's guard: their result, and the events
    /// and commands they recorded.
    pub(crate) async fn run_steps<T, F>(
        &self,
        conn: &mut B::Connection,
        options: &UnitOfWorkOptions,
        attempt: u32,
        steps: &mut F,
    ) -> (Result<T, Error>, Vec<Envelope>, Vec<crate::outbox::Sent>)
    where
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        let mut tx = Tx::new(conn, attempt, options.cause, self.routing());
        let outcome = guard::inside(options.name, steps(&mut tx)).await;
        let (events, commands) = tx.into_outgoing();
        (outcome, events, commands)
    }

    /// What a unit of work writes to the outbox with its messages: their routing, and a
    /// fresh lease token with the fast path's lease when this process delivers its own
    /// commits' events at once, inside the transaction `marker` names.
    pub(crate) fn outgoing<'a>(
        &'a self,
        events: &'a [keel_domain::Envelope],
        commands: &'a [crate::outbox::Sent],
        marker: (uuid::Uuid, crate::Isolation),
    ) -> Outgoing<'a> {
        let routing = self.routing();
        Outgoing {
            events,
            commands,
            routing,
            lease: routing
                .and_then(|r| r.fast_path_lease())
                .map(|lease| (crate::operations::lease_token(), lease)),
            marker: Some(marker),
        }
    }

    /// Rolls back what can be, and leaves the connection to be closed: after its steps
    /// ended or replaced the transaction, its state is unknown.
    async fn abandon(&self, open: &mut Open<B>, error: Error) -> Error {
        let _ = B::rollback(&mut open.conn).await;
        open.ended = false;
        tracing::error!(%error, "the connection is closed");
        error
    }
}

/// Marks the deliveries a handler's unit of work processes done, first thing in its
/// transaction: all of them, or the unit of work does not run.
pub(crate) async fn mark_processed<B: Backend>(
    conn: &mut B::Connection,
    event_ids: &[keel_domain::EventId],
    handler: &'static str,
) -> Result<(), Error> {
    match B::mark_done(conn, event_ids, handler).await {
        Ok(n) if n == event_ids.len() => Ok(()),
        Ok(0) => Err(Error::AlreadyProcessed {
            event_id: event_ids
                .first()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            handler,
        }),
        Ok(_) => Err(Error::BatchPartlyProcessed { handler }),
        Err(error) => Err(error),
    }
}

/// `a`, `b` as a sentence fragment.
pub(crate) fn names(names: &[&'static str]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A pooled connection during a unit of work. Unless the transaction ended cleanly, the
/// connection is closed instead of going back to the pool: a panic or a dropped future
/// mid-transaction, or steps that tampered with the transaction, leave it in a state the
/// next user must not inherit (the server rolls back what a closed connection left open).
struct Open<B: Backend> {
    conn: PoolConnection<B>,
    ended: bool,
}

impl<B: Backend> Drop for Open<B> {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}
