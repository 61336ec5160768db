//! The session: how application code runs units of work.

use keel_orchestrator::{Backend, Database, Error, Tx, TxFn, UnitOfWorkOptions};
use sqlx::pool::PoolConnection;

use crate::Dispatcher;

/// Runs units of work and releases their events after commit.
///
/// A session is cheap: take one per request or job (`app.session()`). It is not `Clone`,
/// and running a unit of work borrows it mutably until the unit of work ends, so the steps
/// can use neither the session nor anything reached through it: no second connection, no
/// nested unit of work, no dispatch. The compiler says so (E0499/E0502) at the offending
/// line.
///
/// ```no_run
/// # mod keel { pub use keel_dispatcher::Session; pub use keel_orchestrator::Error; }
/// # use keel::Session;
/// # async fn run(session: &mut Session<'_, sqlx::Postgres>) -> Result<(), keel::Error> {
/// let likes: i64 = session
///     .unit_of_work(async |tx| {
///         let (likes,): (i64,) = sqlx::query_as("UPDATE posts SET likes = likes + 1 WHERE id = 1 RETURNING likes")
///             .fetch_one(tx.conn())
///             .await?;
///         Ok(likes)
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Session<'a, B: Backend> {
    db: Database<B>,
    dispatcher: &'a Dispatcher<B>,
}

impl<B: Backend> std::fmt::Debug for Session<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("db", &self.db).finish()
    }
}

impl<'a, B: Backend> Session<'a, B> {
    /// A session on the dispatcher's database.
    pub fn new(dispatcher: &'a Dispatcher<B>) -> Self {
        Session {
            db: dispatcher.database().clone(),
            dispatcher,
        }
    }

    /// Runs `steps` as one unit of work with default options, then releases the events
    /// it recorded to their handlers and returns its value.
    ///
    /// See [`Database::unit_of_work_with`] for commit, rollback and retries.
    pub async fn unit_of_work<T, F>(&mut self, steps: F) -> Result<T, Error>
    where
        F: AsyncFnMut(&mut Tx<'_, B>) -> Result<T, Error>,
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        let receipt = self.db.unit_of_work(steps).await?;
        self.dispatcher.dispatch(receipt)
    }

    /// [`Session::unit_of_work`] with explicit [`UnitOfWorkOptions`] options.
    pub async fn unit_of_work_with<T, F>(
        &mut self,
        options: &UnitOfWorkOptions,
        steps: F,
    ) -> Result<T, Error>
    where
        F: AsyncFnMut(&mut Tx<'_, B>) -> Result<T, Error>,
        F: for<'t, 'c> TxFn<&'t mut Tx<'c, B>, T>,
    {
        let receipt = self.db.unit_of_work_with(options, steps).await?;
        self.dispatcher.dispatch(receipt)
    }

    /// Sends a command to the bus, durably, at once; a worker handles it. Inside a unit
    /// of work, use `tx.send(command)` so that it commits with the unit of work.
    ///
    /// Returns the command's id, by which the dead letter finds it if its handler refuses
    /// it. Fails with [`Error::NoCommandHandler`] if no handler is registered for it.
    pub async fn send<C: keel_domain::Command>(
        &mut self,
        command: C,
    ) -> Result<keel_domain::EventId, Error> {
        self.db.send(command).await
    }

    /// A connection for reads outside any unit of work.
    pub async fn acquire(&self) -> Result<PoolConnection<B>, Error> {
        self.db.acquire().await
    }
}
