//! The transaction handle the steps of a unit of work receive.

use keel_domain::{Aggregate, Command, DomainEvent, Envelope, Version};
use sqlx::query::Query;
use sqlx::{AnyConnection, AssertSqlSafe};

use crate::lock::is_identifier;
use crate::outbox::{Routing, Sent};
use crate::unit_of_work::Cause;
use crate::{Backend, Db, Error, Key, LockWait, Locked, RowLock};

/// The open transaction of one unit of work attempt: the only way its steps reach the
/// database.
///
/// A `Tx` is lent to the closure of [`Database::unit_of_work`](crate::Database::unit_of_work)
/// for one attempt and cannot outlive it. Run sqlx queries on [`Tx::conn`]; use the helpers
/// for locks and optimistic versions.
///
/// Query text is portable between the backends when it uses `$1, $2, …` placeholders and
/// standard SQL; [`Tx::backend`] tells which engine runs it when a repository needs to branch.
pub struct Tx<'c> {
    conn: &'c mut AnyConnection,
    backend: Backend,
    attempt: u32,
    cause: Option<Cause>,
    routing: Option<&'c dyn Routing>,
    events: Vec<Envelope>,
    commands: Vec<Sent>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("backend", &self.backend)
            .field("attempt", &self.attempt)
            .field("recorded", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// Wraps a command for the outbox, marked as caused by `cause` if any.
pub(crate) fn prepare_command<C: Command>(
    command: &C,
    cause: Option<Cause>,
) -> Result<Sent, Error> {
    let mut envelope = Envelope::wrap_command(command).map_err(|source| Error::Serialization {
        event: C::NAME,
        source,
    })?;
    if let Some(cause) = cause {
        envelope.correlation_id = cause.correlation_id;
        envelope.causation_id = Some(cause.causation_id);
    }
    Ok(Sent {
        envelope,
        key: command.key(),
    })
}

/// A command nobody handles is refused when the handlers are known.
pub(crate) fn check_handled<C: Command>(routing: Option<&dyn Routing>) -> Result<(), Error> {
    match routing {
        Some(routing) if routing.handlers_for(C::NAME).is_empty() => {
            Err(Error::NoCommandHandler { command: C::NAME })
        }
        _ => Ok(()),
    }
}

fn bind_key<'q>(
    query: Query<'q, Db, sqlx::any::AnyArguments>,
    key: &Key,
) -> Query<'q, Db, sqlx::any::AnyArguments> {
    match key {
        Key::Int(i) => query.bind(*i),
        Key::Text(s) => query.bind(s.clone()),
    }
}

impl<'c> Tx<'c> {
    pub(crate) fn new(
        conn: &'c mut AnyConnection,
        backend: Backend,
        attempt: u32,
        cause: Option<Cause>,
        routing: Option<&'c dyn Routing>,
    ) -> Self {
        Tx {
            conn,
            backend,
            attempt,
            cause,
            routing,
            events: Vec::new(),
            commands: Vec::new(),
        }
    }

    pub(crate) fn into_outgoing(self) -> (Vec<Envelope>, Vec<Sent>) {
        (self.events, self.commands)
    }

    fn caused(&self, mut envelope: Envelope) -> Envelope {
        if let Some(cause) = self.cause {
            envelope.correlation_id = cause.correlation_id;
            envelope.causation_id = Some(cause.causation_id);
        }
        envelope
    }

    /// Sends a command to the bus. It is written with this transaction and reaches a
    /// worker only if the unit of work commits; if the attempt rolls back or is retried,
    /// it is dropped with it.
    ///
    /// Fails with [`Error::NoCommandHandler`] when this database handle knows the handlers
    /// (it belongs to an app) and none is registered for the command.
    pub fn send<C: Command>(&mut self, command: C) -> Result<(), Error> {
        let sent = self.prepare(&command)?;
        self.commands.push(sent);
        Ok(())
    }

    /// Checks and wraps a command for sending.
    pub(crate) fn prepare<C: Command>(&self, command: &C) -> Result<Sent, Error> {
        check_handled::<C>(self.routing)?;
        let envelope = Envelope::wrap_command(command).map_err(|source| Error::Serialization {
            event: C::NAME,
            source,
        })?;
        Ok(Sent {
            envelope: self.caused(envelope),
            key: command.key(),
        })
    }

    pub(crate) fn push_sent(&mut self, sent: Sent) {
        self.commands.push(sent);
    }

    /// Records a domain event. It is delivered to its handlers only after this unit of
    /// work commits; if the attempt rolls back or is retried, the event is dropped with it.
    ///
    /// Fails only if the event cannot be serialized ([`Error::Serialization`]).
    ///
    /// ```no_run
    /// # use keel_orchestrator::{Database, Error};
    /// # use keel_domain::DomainEvent;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct PostLiked { post_id: i64 }
    /// # impl DomainEvent for PostLiked { const NAME: &'static str = "post.liked.v1";
    /// #   const AGGREGATE_TYPE: &'static str = "Post";
    /// #   fn aggregate_id(&self) -> String { self.post_id.to_string() } }
    /// # async fn run(mut db: Database) -> Result<(), Error> {
    /// let receipt = db
    ///     .unit_of_work(async |tx| {
    ///         sqlx::query("UPDATE posts SET likes = likes + 1 WHERE id = 1")
    ///             .execute(tx.conn())
    ///             .await?;
    ///         tx.record(PostLiked { post_id: 1 })?;
    ///         Ok(())
    ///     })
    ///     .await?;
    /// assert_eq!(receipt.events().len(), 1);
    /// # let _ = receipt.into_value(); Ok(()) }
    /// ```
    pub fn record<E: DomainEvent>(&mut self, event: E) -> Result<(), Error> {
        let envelope = Envelope::wrap(&event).map_err(|source| Error::Serialization {
            event: E::NAME,
            source,
        })?;
        let envelope = self.caused(envelope);
        self.events.push(envelope);
        Ok(())
    }

    /// The events recorded so far by this attempt, read-only: they are released by commit,
    /// never from an open transaction.
    pub fn recorded(&self) -> &[Envelope] {
        &self.events
    }

    /// The transaction's connection, to run sqlx queries on:
    /// `sqlx::query("…").bind(x).execute(tx.conn()).await?`.
    pub fn conn(&mut self) -> &mut AnyConnection {
        self.conn
    }

    /// The engine running this transaction.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Which attempt of the unit of work this is (1 for the first run).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Locks one row until the unit of work ends.
    ///
    /// Returns [`Locked::Missing`] when no row has the key, [`Locked::Skipped`] when the
    /// row is held and the request said [`skip_locked`](RowLock::skip_locked). A `nowait`
    /// request on a held row fails with [`Error::RowLocked`]; a waiting one that exceeds
    /// the lock timeout fails with [`Error::LockTimeout`]. Both are retried per policy.
    ///
    /// ```no_run
    /// # use keel_orchestrator::{Database, Error, Locked, RowLock};
    /// # async fn run(mut db: Database) -> Result<(), Error> {
    /// db.unit_of_work(async |tx| {
    ///     match tx.lock(RowLock::for_update("accounts", 1)).await? {
    ///         Locked::Acquired => Ok(()),
    ///         _ => Err(Error::rejected(std::io::Error::other("no such account"))),
    ///     }
    /// })
    /// .await
    /// .map(|receipt| receipt.into_value())
    /// # }
    /// ```
    pub async fn lock(&mut self, lock: RowLock) -> Result<Locked, Error> {
        for name in [lock.table, lock.key_column] {
            if !is_identifier(name) {
                return Err(Error::InvalidIdentifier(name));
            }
        }
        let sql = match self.backend {
            Backend::Postgres => lock.postgres_sql(),
            // The write lock taken by BEGIN IMMEDIATE already covers every row.
            Backend::Sqlite => lock.exists_sql(),
        };
        let query = bind_key(sqlx::query(AssertSqlSafe(sql)), &lock.key);
        let found = match query.fetch_optional(&mut *self.conn).await {
            Ok(row) => row.is_some(),
            Err(e) => {
                let e = Error::from(e);
                return Err(match (lock.wait, e) {
                    (LockWait::NoWait, Error::LockTimeout { .. }) => Error::RowLocked {
                        table: lock.table,
                        key: lock.key.to_string(),
                    },
                    (_, e) => e,
                });
            }
        };
        if found {
            return Ok(Locked::Acquired);
        }
        if lock.wait == LockWait::SkipLocked && self.backend == Backend::Postgres {
            let exists = bind_key(sqlx::query(AssertSqlSafe(lock.exists_sql())), &lock.key)
                .fetch_optional(&mut *self.conn)
                .await?;
            if exists.is_some() {
                return Ok(Locked::Skipped);
            }
        }
        Ok(Locked::Missing)
    }

    /// Takes the named lock `name` until the unit of work ends, creating it on first use.
    ///
    /// Units of work that lock the same name run one after the other, even when the name
    /// has never been locked before and many of them ask at the same moment. Use it to
    /// serialize work on something that has no row of its own (an import, a user's quota).
    pub async fn lock_named(&mut self, name: &str) -> Result<(), Error> {
        if self.backend == Backend::Postgres {
            let existing = sqlx::query("SELECT 1 FROM keel_locks WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *self.conn)
                .await?;
            if existing.is_some() {
                return Ok(());
            }
        }
        // A concurrent creator's uncommitted row makes this insert wait until that
        // transaction ends; then the conflict is ignored and the lock below is granted.
        let created = sqlx::query(
            "INSERT INTO keel_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING 1",
        )
        .bind(name)
        .fetch_optional(&mut *self.conn)
        .await?;
        if created.is_some() || self.backend == Backend::Sqlite {
            return Ok(());
        }
        let locked = sqlx::query("SELECT 1 FROM keel_locks WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *self.conn)
            .await?;
        match locked {
            Some(_) => Ok(()),
            // Only under REPEATABLE READ / SERIALIZABLE: the row committed after this
            // transaction's snapshot. A fresh attempt sees it.
            None => Err(Error::LockTimeout {
                detail: format!("named lock `{name}` was created concurrently; retrying"),
            }),
        }
    }

    /// Saves the version of `aggregate` optimistically: moves the row's `version` column
    /// from the version the aggregate was loaded at to the next one, and returns it.
    ///
    /// If the row is no longer at that version, someone saved the aggregate meanwhile:
    /// fails with [`Error::VersionConflict`], which re-runs the unit of work on fresh
    /// data. Call it in the same unit of work as the statements that store the
    /// aggregate's other fields. The table's key column is `id`; the key is the
    /// aggregate's id converted into a [`Key`]. A missing row is a permanent
    /// [`Error::Database`] (`RowNotFound`), not a conflict.
    pub async fn save_version<A>(
        &mut self,
        table: &'static str,
        aggregate: &A,
    ) -> Result<Version, Error>
    where
        A: Aggregate,
        A::Id: Into<Key>,
    {
        if !is_identifier(table) {
            return Err(Error::InvalidIdentifier(table));
        }
        let expected = aggregate.version();
        let key: Key = aggregate.id().clone().into();
        let sql =
            format!("UPDATE {table} SET version = version + 1 WHERE id = $1 AND version = $2");
        let result = bind_key(sqlx::query(AssertSqlSafe(sql)), &key)
            .bind(expected.get())
            .execute(&mut *self.conn)
            .await?;
        if result.rows_affected() == 1 {
            return Ok(expected.next());
        }
        let exists = bind_key(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT 1 FROM {table} WHERE id = $1"
            ))),
            &key,
        )
        .fetch_optional(&mut *self.conn)
        .await?;
        match exists {
            Some(_) => Err(Error::VersionConflict {
                aggregate: A::TYPE,
                id: key.to_string(),
                expected,
            }),
            None => Err(Error::Database(sqlx::Error::RowNotFound)),
        }
    }
}
