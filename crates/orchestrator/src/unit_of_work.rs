//! Running a unit of work: begin, run the steps, commit or roll back, retry when transient.

use std::future::Future;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use tracing::Instrument;

use keel_domain::{Envelope, EventId};

use crate::outbox::Outgoing;
use crate::{Backend, Committed, Database, Error, RetryPolicy, Tx, committed, guard};

/// The options of Keel's own short units of work (claims, outcomes): retried more than a
/// user's, since they only ever meet other workers.
pub(crate) fn internal(name: &'static str) -> UnitOfWork {
    UnitOfWork::named(name).retry(RetryPolicy::default().max_attempts(8))
}

/// Transaction isolation level (PostgreSQL; SQLite transactions are always serializable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// PostgreSQL's default: each statement sees what was committed before it began.
    #[default]
    ReadCommitted,
    /// One snapshot for the whole transaction; concurrent updates fail with a
    /// serialization failure (retried).
    RepeatableRead,
    /// Full serializability; anomalies such as write skew fail with a serialization
    /// failure (retried).
    Serializable,
}

/// Options of one unit of work: its name (for logs and errors), isolation level, lock
/// timeout and retry policy.
///
/// ```
/// use std::time::Duration;
/// use keel_orchestrator::{Isolation, RetryPolicy, UnitOfWork};
///
/// let transfer = UnitOfWork::named("transfer")
///     .isolation(Isolation::Serializable)
///     .lock_timeout(Duration::from_millis(200))
///     .retry(RetryPolicy::default().max_attempts(8));
/// assert_eq!(transfer.name(), "transfer");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct UnitOfWork {
    name: &'static str,
    isolation: Isolation,
    lock_timeout: Option<Duration>,
    retry: RetryPolicy,
    cause: Option<Cause>,
    processes: Option<(Vec<EventId>, &'static str)>,
}

/// The event whose handling runs a unit of work: events it records join the cause's
/// correlation and name it as their causation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cause {
    pub(crate) correlation_id: uuid::Uuid,
    pub(crate) causation_id: EventId,
}

impl Default for UnitOfWork {
    fn default() -> Self {
        UnitOfWork::named("unit_of_work")
    }
}

impl UnitOfWork {
    /// Default options under a name that appears in spans and errors.
    pub fn named(name: &'static str) -> Self {
        UnitOfWork {
            name,
            isolation: Isolation::default(),
            lock_timeout: None,
            retry: RetryPolicy::default(),
            cause: None,
            processes: None,
        }
    }

    /// Sets the isolation level (PostgreSQL).
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Bounds how long any lock of this unit of work may be waited for. On PostgreSQL it
    /// sets `lock_timeout` for the transaction; on SQLite it bounds the wait for the write
    /// lock. Exceeding it is [`Error::LockTimeout`], which is retried.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// Sets the retry policy for transient failures.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Marks the events this unit of work records as caused by `event` (same correlation
    /// id, causation id = `event.id`). Handler contexts set this for you.
    pub fn caused_by(mut self, event: &Envelope) -> Self {
        self.cause = Some(Cause {
            correlation_id: event.correlation_id,
            causation_id: event.id,
        });
        self
    }

    /// Makes this unit of work the one that processes the delivery of event `event_id` to
    /// `handler`: its first statement marks the delivery done, in the same transaction as
    /// the handler's effects. If the delivery is already done, the steps do not run and the
    /// result is [`Error::AlreadyProcessed`]. Handler contexts set this for you.
    pub fn processing(self, event_id: EventId, handler: &'static str) -> Self {
        self.processing_all(vec![event_id], handler)
    }

    /// [`UnitOfWork::processing`] for a batch of commands handled together: all of them
    /// are marked done with the batch's effects, or none. If only some are still pending,
    /// the steps do not run and the result is [`Error::BatchPartlyProcessed`].
    pub fn processing_all(mut self, event_ids: Vec<EventId>, handler: &'static str) -> Self {
        self.processes = Some((event_ids, handler));
        self
    }

    /// The retry policy of this unit of work.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The name given to this unit of work.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The closure of a unit of work: called with `&mut Tx`, its future must be `Send`.
///
/// You never implement this trait; every suitable closure has it. It exists because rustc
/// cannot yet prove on its own that the future of an `async` closure borrowing from its
/// surroundings is `Send` (rust-lang/rust#138207): naming the future here makes that
/// check happen at the closure, with a clear error if the body holds something not `Send`
/// (an `Rc`, a `std::sync::MutexGuard`) across an `.await`.
///
/// Closures must *borrow* what they capture (`let x = &x;` before `async move`), because
/// they are re-run on retries.
#[diagnostic::on_unimplemented(
    message = "this closure cannot be run as a unit of work",
    label = "expected `async |tx| {{ … }}` returning `Result<_, keel::Error>` whose future is `Send`",
    note = "a unit of work closure receives `&mut Tx` and must not hold non-`Send` values (Rc, \
            std MutexGuard) across `.await`"
)]
pub trait TxFn<A, T>: FnMut(A) -> <Self as TxFn<A, T>>::Fut {
    /// The future one call returns.
    type Fut: Future<Output = Result<T, Error>> + Send;
}

impl<A, T, F, Fut> TxFn<A, T> for F
where
    F: FnMut(A) -> Fut,
    Fut: Future<Output = Result<T, Error>> + Send,
{
    type Fut = Fut;
}

impl<B: Backend> Database<B> {
    /// Runs `steps` as one unit of work with default [`UnitOfWork`] options.
    ///
    /// See [`Database::unit_of_work_with`].
    pub async fn unit_of_work<T, F>(&mut self, steps: F) -> Result<Committed<T>, Error>
    where
        F: AsyncFnMut(&mut Tx<'_, B>) -> Result<T, Error>,
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        self.unit_of_work_with(&UnitOfWork::default(), steps).await
    }

    /// Runs `steps` in one transaction on one connection: commit if they return `Ok`,
    /// roll back if they return `Err`, panic, or the returned future is dropped.
    ///
    /// On commit the result is a [`Committed`] receipt holding the value and the events
    /// the committing attempt recorded with [`Tx::record`]; events of failed attempts are
    /// dropped with them. Applications normally go through `keel::Session`, which
    /// releases the receipt's events after commit.
    ///
    /// The database is borrowed mutably for the whole run, so the steps cannot use it:
    /// they get only the `&mut Tx`.
    ///
    /// A transient error ([`Error::is_transient`]) rolls the attempt back and runs
    /// `steps` again on a fresh transaction after the retry policy's delay; when the
    /// policy is exhausted the result is [`Error::RetriesExhausted`] holding the last
    /// error. Any other error is returned at once. Each attempt is a `tracing` span
    /// `unit_of_work` with fields `name`, `attempt` and `outcome`.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use keel_orchestrator::{Database, Error, RowLock, UnitOfWork};
    /// # async fn run(mut db: Database<sqlx::Postgres>) -> Result<(), Error> {
    /// let debit = UnitOfWork::named("debit").lock_timeout(Duration::from_millis(100));
    /// let amount = 50_i64;
    /// db.unit_of_work_with(&debit, async |tx| {
    ///     let _ = tx.lock(RowLock::for_update("accounts", 1)).await?;
    ///     sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = 1")
    ///         .bind(amount)
    ///         .execute(tx.conn())
    ///         .await?;
    ///     Ok(())
    /// })
    /// .await?
    /// .into_value();
    /// # Ok(()) }
    /// ```
    pub async fn unit_of_work_with<T, F>(
        &mut self,
        options: &UnitOfWork,
        mut steps: F,
    ) -> Result<Committed<T>, Error>
    where
        F: AsyncFnMut(&mut Tx<'_, B>) -> Result<T, Error>,
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        guard::ensure_outside("open another unit of work")?;
        let mut attempt = 1;
        loop {
            let span = tracing::debug_span!(
                "unit_of_work",
                name = options.name,
                attempt,
                outcome = tracing::field::Empty,
            );
            let result = self
                .attempt(options, attempt, &mut steps)
                .instrument(span.clone())
                .await;
            match result {
                Ok((value, events, lease_token)) => {
                    span.record("outcome", "committed");
                    return Ok(committed::receipt(value, events, lease_token));
                }
                Err(error)
                    if error.is_transient() && options.retry.allows_another_after(attempt) =>
                {
                    let delay = options.retry.jittered_delay_before(attempt + 1);
                    span.record("outcome", "retrying");
                    tracing::debug!(
                        parent: &span,
                        %error,
                        delay_ms = delay.as_secs_f64() * 1e3,
                        "transient failure; re-running the unit of work on a fresh transaction",
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) if error.is_transient() => {
                    span.record("outcome", "gave_up");
                    tracing::warn!(parent: &span, %error, "unit of work gave up after {attempt} attempts");
                    return Err(Error::RetriesExhausted {
                        unit_of_work: options.name,
                        attempts: attempt,
                        last: Box::new(error),
                    });
                }
                Err(error) => {
                    span.record("outcome", "rolled_back");
                    tracing::debug!(parent: &span, %error, "unit of work rolled back");
                    return Err(error);
                }
            }
        }
    }

    /// Sends a command to the bus on its own, in a unit of work of its own: it is durable
    /// when this returns, and a worker handles it. Inside a unit of work, use
    /// [`Tx::send`] instead, so that the command commits with the rest.
    pub async fn send<C: keel_domain::Command>(&mut self, command: C) -> Result<(), Error> {
        crate::tx::check_handled::<C>(self.routing())?;
        if B::ATOMIC_OUTBOX_WRITE {
            // One statement is atomic on its own: no BEGIN/COMMIT round trips.
            guard::ensure_outside("send a command outside the unit of work (use `tx.send`)")?;
            let sent = [crate::tx::prepare_command(&command, None)?];
            let mut conn = self.pool().acquire().await?;
            let outgoing = Outgoing {
                events: &[],
                commands: &sent,
                routing: self.routing(),
                lease: None,
                marker: None,
            };
            B::write_outbox(&mut *conn, &outgoing).await?;
            self.after_commit(&mut conn, true).await;
            return Ok(());
        }
        let sent = &command;
        self.unit_of_work_with(&UnitOfWork::named("send"), async |tx| {
            let prepared = tx.prepare(sent)?;
            tx.push_sent(prepared);
            Ok(())
        })
        .await
        .map(|receipt| receipt.into_value())
    }

    /// Wakes relays after a commit that left them work: this process's at once, other
    /// processes' through the backend's notifications.
    async fn after_commit(&self, conn: &mut PoolConnection<B>, left_for_relay: bool) {
        if !left_for_relay {
            return;
        }
        if let Some(routing) = self.routing() {
            routing.left_for_relay();
        }
        self.notify_relays(conn).await;
    }

    /// One attempt: a fresh connection and transaction, the steps, then commit or rollback.
    async fn attempt<T, F>(
        &self,
        options: &UnitOfWork,
        attempt: u32,
        steps: &mut F,
    ) -> Result<(T, Vec<Envelope>, Option<uuid::Uuid>), Error>
    where
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        let holding = self.hold(options.name);
        let _writer = if B::ONE_WRITER {
            let wait = options
                .lock_timeout
                .unwrap_or(self.options().lock_timeout);
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
        let conn = self
            .pool()
            .acquire()
            .await
            .map_err(|e| self.exhausted(options.name, Some(holding.id()), e))?;
        let mut open = Open { conn, ended: true };
        if let Some(timeout) = options.lock_timeout {
            B::before_begin(&mut open.conn, timeout).await?;
        }
        let outcome = self.transaction(&mut open, options, attempt, steps).await;
        if options.lock_timeout.is_some()
            && open.ended
            && let Err(error) = B::after_end(&mut open.conn, self.options()).await
        {
            tracing::warn!(%error, "could not restore the connection's defaults; it is closed");
            open.ended = false;
        }
        outcome
    }

    /// The transaction of one attempt: begin, the steps, the outbox, then commit or
    /// rollback. Commits only the transaction it began, on the connection it began it on.
    async fn transaction<T, F>(
        &self,
        open: &mut Open<B>,
        options: &UnitOfWork,
        attempt: u32,
        steps: &mut F,
    ) -> Result<(T, Vec<Envelope>, Option<uuid::Uuid>), Error>
    where
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        let marker = uuid::Uuid::now_v7();
        open.ended = false;
        B::begin(&mut open.conn, options.isolation, options.lock_timeout, marker).await?;
        let outcome = match &options.processes {
            Some((event_ids, handler)) => match B::mark_done(&mut open.conn, event_ids, handler).await {
                Ok(n) if n == event_ids.len() => Ok(()),
                Ok(0) => Err(Error::AlreadyProcessed {
                    event_id: event_ids.first().map(|id| id.to_string()).unwrap_or_default(),
                    handler,
                }),
                Ok(_) => Err(Error::BatchPartlyProcessed { handler }),
                Err(error) => Err(error),
            },
            None => Ok(()),
        };
        let (outcome, events, commands) = match outcome {
            Ok(()) => {
                let mut tx = Tx::new(&mut *open.conn, attempt, options.cause, self.routing());
                let outcome = guard::inside(options.name, steps(&mut tx)).await;
                let (events, commands) = tx.into_outgoing();
                (outcome, events, commands)
            }
            Err(error) => (Err(error), Vec::new(), Vec::new()),
        };
        let replaced = || Error::TransactionReplaced {
            unit_of_work: options.name,
        };
        let outcome = match outcome {
            Ok(value) => match B::verify(&mut open.conn, marker).await {
                Ok(true) => Ok(value),
                Ok(false) => return Err(self.abandon(open, replaced()).await),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let lease = self
            .routing()
            .and_then(|r| r.fast_path_lease())
            .map(|lease| (uuid::Uuid::now_v7(), lease));
        let outgoing = Outgoing {
            events: &events,
            commands: &commands,
            routing: self.routing(),
            lease,
            marker: Some(marker),
        };
        let writes = !events.is_empty() || !commands.is_empty();
        let outcome = match outcome {
            Ok(value) if writes => B::write_outbox(&mut open.conn, &outgoing)
                .await
                .map(|()| value),
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
        match B::commit(&mut open.conn, marker, options.isolation).await {
            Ok(true) => open.ended = true,
            Ok(false) => return Err(self.abandon(open, replaced()).await),
            // A database's refusal ends the transaction; a lost connection leaves its
            // outcome unknown, and the connection is closed.
            Err(error @ Error::Database(sqlx::Error::Io(_))) => return Err(error),
            Err(error) => {
                open.ended = true;
                return Err(error);
            }
        }
        let reserved = writes && outgoing.reserves();
        if writes && outgoing.leaves_for_relay() {
            self.after_commit(&mut open.conn, true).await;
        }
        let token = lease.filter(|_| reserved).map(|(token, _)| token);
        Ok((value, events, token))
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
