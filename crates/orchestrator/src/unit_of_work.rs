//! Running a unit of work: begin, run the steps, commit or roll back, retry when transient.

use std::future::Future;

use sqlx::pool::PoolConnection;
use tracing::Instrument;

use crate::outbox::Outgoing;
use crate::{Backend, Committed, Database, Error, Tx, UnitOfWorkOptions, committed, guard};

/// The closure of a unit of work: called with `&mut Tx`, its future must be `Send`.
///
/// You never implement this trait; every suitable closure has it. It exists because rustc
/// cannot yet prove on its own that the future of an `async` closure borrowing from its
/// surroundings is `Send` (rust-lang/rust#138207): naming the future here makes that
/// check happen at the closure, with a clear error if the body holds something not `Send`
/// (an `Rc`, a `std::sync::MutexGuard`) across an `.await`.
///
/// Closures must *borrow* what they capture (`let x = &x;` before `async move`), because
/// they are re-run on retries. A closure that uses its surroundings mutably (the session it
/// runs in, a vector it pushes the `Tx` into, a counter) is refused with the rules it
/// breaks.
#[diagnostic::on_unimplemented(
    message = "this closure cannot be run as a unit of work",
    label = "this closure uses its surroundings mutably; a unit of work closure may only borrow \
             them immutably",
    note = "a unit of work cannot be opened inside another one: its steps cannot use the session",
    note = "the transaction cannot leave its unit of work: the steps cannot store the `&mut Tx` \
            outside",
    note = "the steps are re-run on retries: keep counters in an `&AtomicU32`, or return them"
)]
pub trait TxFn<A, T>: TxStep<A, Fut: Future<Output = Result<T, Error>> + Send> {}

impl<A, T, F> TxFn<A, T> for F
where
    F: TxStep<A>,
    <F as TxStep<A>>::Fut: Future<Output = Result<T, Error>> + Send,
{
}

/// One call of a unit of work's closure, naming its future ([`TxFn`] requires it `Send`).
/// Its own message is [`TxFn`]'s: rustc reports either, depending on the mistake.
#[diagnostic::on_unimplemented(
    message = "this closure cannot be run as a unit of work",
    label = "this closure uses its surroundings mutably; a unit of work closure may only borrow \
             them immutably",
    note = "a unit of work cannot be opened inside another one: its steps cannot use the session",
    note = "the transaction cannot leave its unit of work: the steps cannot store the `&mut Tx` \
            outside",
    note = "the steps are re-run on retries: keep counters in an `&AtomicU32`, or return them"
)]
#[doc(hidden)]
pub trait TxStep<A>: FnMut(A) -> <Self as TxStep<A>>::Fut {
    /// The future one call returns.
    type Fut: Future;
}

// Not recommended: rustc then reports the rule above instead of "async closure does not
// implement `FnMut`".
#[diagnostic::do_not_recommend]
impl<A, F, Fut> TxStep<A> for F
where
    F: FnMut(A) -> Fut,
    Fut: Future,
{
    type Fut = Fut;
}

impl<B: Backend> Database<B> {
    /// Runs `steps` as one unit of work with default [`UnitOfWorkOptions`] options.
    ///
    /// See [`Database::unit_of_work_with`].
    pub async fn unit_of_work<T, F>(&mut self, steps: F) -> Result<Committed<T>, Error>
    where
        F: AsyncFnMut(&mut Tx<'_, B>) -> Result<T, Error>,
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        self.unit_of_work_with(&UnitOfWorkOptions::default(), steps)
            .await
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
    /// # mod keel { pub use keel_orchestrator::{Database, Error, RowLock, UnitOfWorkOptions}; }
    /// # use std::time::Duration;
    /// # use keel::{Database, Error, RowLock, UnitOfWorkOptions};
    /// # async fn run(mut db: Database<sqlx::Postgres>) -> Result<(), Error> {
    /// let debit = UnitOfWorkOptions::named("debit").lock_timeout(Duration::from_millis(100));
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
        options: &UnitOfWorkOptions,
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
            if !options.internal {
                crate::telemetry::unit_of_work_attempt(options.name);
            }
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
                    if !options.internal {
                        crate::telemetry::unit_of_work_retry(options.name, &error);
                    }
                    tracing::debug!(
                        parent: &span,
                        %error,
                        delay_ms = delay.as_millis() as u64,
                        "transient failure; re-running the unit of work on a fresh transaction",
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) if error.is_transient() => {
                    span.record("outcome", "gave_up");
                    tracing::warn!(parent: &span, %error, attempts = attempt, "unit of work gave up");
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
    /// [`Tx::send`] instead, so that the command commits with the rest. Returns the
    /// command's id, by which the dead letter finds it if its handler refuses it.
    pub async fn send<C: keel_domain::Command>(
        &mut self,
        command: C,
    ) -> Result<keel_domain::EventId, Error> {
        crate::tx::check_handled::<C>(self.routing())?;
        if B::ATOMIC_OUTBOX_WRITE {
            // One statement is atomic on its own: no BEGIN/COMMIT round trips.
            guard::ensure_outside("send a command outside the unit of work (use `tx.send`)")?;
            let sent = [crate::tx::prepare_command(&command, None)?];
            let id = sent[0].envelope.id;
            let mut conn = self.pool().acquire().await?;
            let outgoing = Outgoing {
                events: &[],
                commands: &sent,
                routing: self.routing(),
                lease: None,
                marker: None,
            };
            // Outside any transaction: there is nothing to verify, it always writes. The
            // statement commits itself: a connection lost on its way leaves that unknown.
            match B::write_outbox(&mut *conn, &outgoing).await {
                Ok(_) => {}
                Err(Error::ConnectionLost(source)) => {
                    return Err(Error::CommitOutcomeUnknown {
                        unit_of_work: "send",
                        source,
                    });
                }
                Err(error) => return Err(error),
            }
            self.after_commit(&mut conn, true).await;
            return Ok(id);
        }
        let sent = &command;
        self.unit_of_work_with(&UnitOfWorkOptions::named("send"), async |tx| {
            let prepared = tx.prepare(sent)?;
            let id = prepared.envelope.id;
            tx.push_sent(prepared);
            Ok(id)
        })
        .await
        .map(|receipt| receipt.into_value())
    }

    /// Wakes relays after a commit that left them work: this process's at once, other
    /// processes' through the backend's notifications.
    pub(crate) async fn after_commit(&self, conn: &mut PoolConnection<B>, left_for_relay: bool) {
        if !left_for_relay {
            return;
        }
        if let Some(routing) = self.routing() {
            routing.left_for_relay();
        }
        self.notify_relays(conn).await;
    }
}
