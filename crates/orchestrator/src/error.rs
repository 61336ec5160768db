//! One error type for units of work, and the one place that decides what is transient.

use std::error::Error as StdError;

use keel_domain::Version;

mod rejection;
pub use rejection::Rejection;

/// Everything that can go wrong when opening a database or running a unit of work.
///
/// The variants fall in two classes, decided by [`Error::is_transient`]:
///
/// - **transient**: the database (or an optimistic version check) says "try again":
///   [`Deadlock`](Error::Deadlock), [`SerializationFailure`](Error::SerializationFailure),
///   [`LockTimeout`](Error::LockTimeout), [`RowLocked`](Error::RowLocked),
///   [`VersionConflict`](Error::VersionConflict), [`ConnectionLost`](Error::ConnectionLost)
///   (before `COMMIT`). A unit of work re-runs its closure on a
///   fresh transaction per its [`RetryPolicy`](crate::RetryPolicy), and reports
///   [`RetriesExhausted`](Error::RetriesExhausted) when the policy gives up.
/// - **permanent**: everything else, returned at once.
///
/// Domain refusals ("this assessment is already completed") travel as
/// [`Rejected`](Error::Rejected); see [`Rejection`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL could not be understood.
    #[error(
        "invalid database URL `{url}`: {reason}; expected `postgres://user:password@host:port/database` \
         or `sqlite:path/to/file.db`"
    )]
    InvalidUrl {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The database could not be reached or refused the connection.
    #[error(
        "cannot connect to the database at `{url}`: {}; check that the server is running, \
         that the URL names the right host, port and database, and the credentials",
        server_words(source)
    )]
    Unreachable {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The database has Keel migrations applied that this version of the library does not know.
    #[error(
        "the database schema has keel migration {found} applied, but this library only knows \
         migrations up to {known}: the database was migrated by a newer keel; upgrade this \
         program's keel dependency instead of running it against that database"
    )]
    SchemaNewerThanLibrary {
        /// The unknown migration version found in the database.
        found: i64,
        /// The newest migration this library ships.
        known: i64,
    },

    /// Applying the framework's migrations failed.
    #[error("applying keel's migrations failed: {0}")]
    Migration(#[source] sqlx::migrate::MigrateError),

    /// An optimistic save found that the aggregate changed since it was loaded. Transient.
    #[error(
        "version conflict: {aggregate} {id} is no longer at {expected} (it was saved \
         concurrently); the unit of work is re-run on fresh data"
    )]
    VersionConflict {
        /// The aggregate type ([`Aggregate::TYPE`](keel_domain::Aggregate::TYPE)).
        aggregate: &'static str,
        /// The aggregate id, as text.
        id: String,
        /// The version the save expected to find.
        expected: Version,
    },

    /// A lock was not granted within the unit of work's lock timeout (PostgreSQL
    /// `lock_timeout`, SQLite busy timeout or write-lock wait). Transient.
    #[error(
        "lock not granted within the lock timeout: {detail}; another transaction holds it \
         (to wait longer, raise `UnitOfWorkOptions::lock_timeout`)"
    )]
    LockTimeout {
        /// What the database or Keel reported.
        detail: String,
    },

    /// A `NOWAIT` row lock found the row locked by another transaction. Transient.
    #[error("row `{table}` {key} is locked by another transaction (NOWAIT)")]
    RowLocked {
        /// The table of the row.
        table: &'static str,
        /// The row's key, as text.
        key: String,
    },

    /// The connection was lost (server restart, failover, a network cut) before the
    /// transaction committed: the server rolled it back. Transient: a unit of work runs its
    /// steps again on a fresh connection.
    #[error(
        "the connection to the database was lost before the transaction committed (the \
         database rolled it back): {}",
        server_words(.0)
    )]
    ConnectionLost(#[source] sqlx::Error),

    /// The connection was lost while `COMMIT` was on its way: the transaction may have
    /// committed or not, and nothing tells which. Not retried, since running the steps
    /// again could apply them twice: look at the data (or use an idempotency key) before
    /// trying again.
    #[error(
        "unit of work `{unit_of_work}`: the connection was lost during COMMIT, so whether it \
         committed is unknown; check the data before trying again: {}",
        server_words(source)
    )]
    CommitOutcomeUnknown {
        /// The unit of work's name.
        unit_of_work: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// The database broke a deadlock by aborting this transaction. Transient.
    #[error(
        "deadlock detected; the database aborted this transaction: {}",
        server_words(.0)
    )]
    Deadlock(#[source] sqlx::Error),

    /// A `SERIALIZABLE` (or `REPEATABLE READ`) transaction could not be serialized. Transient.
    #[error(
        "serialization failure; the database aborted this transaction: {}",
        server_words(.0)
    )]
    SerializationFailure(#[source] sqlx::Error),

    /// Every attempt allowed by the retry policy failed with a transient error.
    #[error(
        "unit of work `{unit_of_work}` gave up after {attempts} attempts; last error: {last}; \
         raise `RetryPolicy::max_attempts` or reduce contention on the rows involved"
    )]
    RetriesExhausted {
        /// The unit of work's name.
        unit_of_work: &'static str,
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        #[source]
        last: Box<Error>,
    },

    /// A framework connection or unit of work was requested from inside a unit of work.
    #[error(
        "cannot {action} inside unit of work `{unit_of_work}`: a unit of work runs on one \
         connection, and asking for another while holding it can deadlock the pool; use the \
         `&mut Tx` the closure receives, or do this before or after the unit of work"
    )]
    InsideUnitOfWork {
        /// The unit of work that was running.
        unit_of_work: &'static str,
        /// What was attempted.
        action: &'static str,
    },

    /// No connection came free within the pool's acquire timeout.
    #[error(
        "{waiting} got no connection within {waited_ms} ms: all {size} connections of the pool \
         are in use, by units of work {holders}; if one of them waits for this one (a unit of \
         work opened from a task spawned inside another, or from a blocking call), the pool is \
         deadlocked: do that work before or after the unit of work, or inside it on its `Tx`; \
         otherwise raise `DatabaseOptions::max_connections` or `acquire_timeout`",
        holders = crate::transaction::names(holders)
    )]
    PoolExhausted {
        /// Who waited: a unit of work's name, or "a connection request".
        waiting: &'static str,
        /// How long it waited.
        waited_ms: u64,
        /// The pool's size.
        size: u32,
        /// The units of work that held connections, oldest first (connections taken
        /// outside units of work are not named).
        holders: Vec<&'static str>,
    },

    /// The steps of a unit of work ended its transaction or replaced its connection.
    #[error(
        "the transaction of unit of work `{unit_of_work}` was ended or replaced by its steps \
         (a `COMMIT` or `ROLLBACK` run by hand, a changed isolation level, or `tx.conn()` swapped \
         for another connection): nothing more was committed, its events were dropped and the \
         connection was closed; run statements on `tx.conn()`, and let the unit of work end \
         the transaction"
    )]
    TransactionReplaced {
        /// The unit of work.
        unit_of_work: &'static str,
    },

    /// A table or column name given to a lock or version helper is not a plain SQL identifier.
    #[error(
        "`{0}` is not a plain SQL identifier; use letters, digits and `_` (optionally \
         `schema.table`)"
    )]
    InvalidIdentifier(&'static str),

    /// A handler's unit of work found its delivery already processed: a previous delivery
    /// of the same event committed its effects. Not a failure: the delivery is done.
    #[error("event {event_id} was already processed by handler `{handler}`; nothing to do")]
    AlreadyProcessed {
        /// The event's id.
        event_id: String,
        /// The handler.
        handler: &'static str,
    },

    /// Some commands of a batch were already processed by an earlier delivery: nothing the
    /// batch's steps did committed; its other commands are retried in a new batch.
    #[error(
        "some commands of this batch were already processed by handler `{handler}`; the batch \
         was not applied and its remaining commands are retried"
    )]
    BatchPartlyProcessed {
        /// The handler.
        handler: &'static str,
    },

    /// A command was sent that no handler is registered for.
    #[error(
        "no handler is registered for command `{command}`; a command has exactly one handler: \
         register it (`keel::register_command_handler!`) before sending"
    )]
    NoCommandHandler {
        /// The command's name.
        command: &'static str,
    },

    /// A handler opened a second unit of work in one delivery.
    #[error(
        "handler `{handler}` opened a second unit of work while handling one event; a handler          commits its effects in one unit of work per delivery (that is what makes a repeated          delivery a no-op): merge its writes into a single `ctx.unit_of_work`"
    )]
    SecondHandlerUnitOfWork {
        /// The handler.
        handler: &'static str,
    },

    /// An event could not be serialized when it was recorded.
    #[error("event `{event}` cannot be serialized: {source}")]
    Serialization {
        /// The event's name.
        event: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// A call to another system (an HTTP partner, a mail server) failed. Not transient for
    /// a unit of work; a handler returning it is retried per its policy.
    #[error("external call failed: {0}")]
    External(Box<dyn StdError + Send + Sync + 'static>),

    /// A failure that says when to try again (a partner's `429` with `Retry-After`): a
    /// handler returning it is retried after `delay` instead of its policy's delay, if its
    /// policy allows another attempt. Build it with [`Error::retry_after`].
    #[error("{source} (retry in {} ms)", delay.as_millis())]
    RetryAfter {
        /// How long to wait before the next attempt.
        delay: std::time::Duration,
        /// What failed.
        #[source]
        source: Box<Error>,
    },

    /// The application refused the operation (a domain rule); never retried.
    #[error(transparent)]
    Rejected(Box<dyn StdError + Send + Sync + 'static>),

    /// Any other database error; never retried.
    #[error("database error: {}", server_words(.0))]
    Database(#[source] sqlx::Error),
}

impl Error {
    /// Wraps any error as a [`Rejection`](Error::Rejected) without implementing the marker trait.
    pub fn rejected(error: impl StdError + Send + Sync + 'static) -> Self {
        Error::Rejected(Box::new(error))
    }

    /// `error`, to be retried after `delay` rather than the retry policy's delay
    /// ([`Error::RetryAfter`]): Messenger's recoverable exception with a retry delay.
    ///
    /// ```
    /// # mod keel { pub use keel_orchestrator::Error; }
    /// use std::time::Duration;
    /// use keel::Error;
    ///
    /// let busy = Error::retry_after(Duration::from_secs(30), Error::external("partner: 429"));
    /// assert_eq!(busy.to_string(), "external call failed: partner: 429 (retry in 30000 ms)");
    /// ```
    pub fn retry_after(delay: std::time::Duration, error: impl Into<Error>) -> Self {
        Error::RetryAfter {
            delay,
            source: Box::new(error.into()),
        }
    }

    /// Wraps the failure of a call to another system ([`Error::External`]).
    pub fn external(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Error::External(error.into())
    }

    /// The application's rejection of type `R`, if this error is one.
    pub fn rejection<R: StdError + 'static>(&self) -> Option<&R> {
        match self {
            Error::Rejected(inner) => inner.downcast_ref::<R>(),
            _ => None,
        }
    }

    /// Whether re-running the unit of work on a fresh transaction may succeed.
    ///
    /// This is the single classification of errors in Keel: deadlocks, serialization
    /// failures, lock timeouts, `NOWAIT` lock refusals, busy SQLite databases, optimistic
    /// version conflicts and connections lost before `COMMIT` are transient; everything else
    /// is not (a connection lost during `COMMIT` is
    /// [`CommitOutcomeUnknown`](Error::CommitOutcomeUnknown), never re-run).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::VersionConflict { .. }
                | Error::LockTimeout { .. }
                | Error::RowLocked { .. }
                | Error::Deadlock(_)
                | Error::SerializationFailure(_)
                | Error::ConnectionLost(_)
        )
    }

    /// Whether the database is unavailable (unreachable, its connections lost or all in
    /// use for the whole acquire timeout): a service answers `503` with `Retry-After`, and
    /// the same request may succeed later.
    ///
    /// [`Error::CommitOutcomeUnknown`] is not one of them: the request may have taken
    /// effect, and only an operation that tells a repeat apart may invite a retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.last_attempt(),
            Error::Unreachable { .. } | Error::PoolExhausted { .. } | Error::ConnectionLost(_)
        ) || matches!(
            self.last_attempt(),
            Error::Database(sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut)
        )
    }

    /// The error that ended the last attempt: for [`RetriesExhausted`](Error::RetriesExhausted),
    /// the last attempt's error; otherwise `self`.
    pub fn last_attempt(&self) -> &Error {
        match self {
            Error::RetriesExhausted { last, .. } => last,
            other => other,
        }
    }
}

/// What a driver error means for retries: each enabled backend classifies its own
/// errors ([`Store::classify`](crate::store::Store::classify)); anything else is permanent.
impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        #[cfg(feature = "postgres")]
        let error = match <sqlx::Postgres as crate::store::Store>::classify(error) {
            Ok(classified) => return classified,
            Err(error) => error,
        };
        #[cfg(feature = "sqlite")]
        let error = match <sqlx::Sqlite as crate::store::Store>::classify(error) {
            Ok(classified) => return classified,
            Err(error) => error,
        };
        match error {
            sqlx::Error::Io(_) => Error::ConnectionLost(error),
            error => Error::Database(error),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Error::Migration(error)
    }
}

/// The driver's error as a person reads it: a server's error in the server's words alone
/// (sqlx appends the line of PostgreSQL's source code that raised it).
fn server_words(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => format!("error returned from database: {}", db.message()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("already completed")]
    struct AlreadyCompleted;
    impl Rejection for AlreadyCompleted {}

    #[test]
    fn only_contention_is_transient() {
        let conflict = Error::VersionConflict {
            aggregate: "Account",
            id: "1".into(),
            expected: Version::new(3),
        };
        assert!(conflict.is_transient());
        assert!(Error::LockTimeout { detail: "x".into() }.is_transient());
        assert!(
            Error::RowLocked {
                table: "t",
                key: "1".into()
            }
            .is_transient()
        );
        assert!(Error::Deadlock(sqlx::Error::RowNotFound).is_transient());
        assert!(Error::SerializationFailure(sqlx::Error::RowNotFound).is_transient());
        assert!(Error::ConnectionLost(sqlx::Error::RowNotFound).is_transient());

        assert!(!Error::from(AlreadyCompleted).is_transient());
        assert!(!Error::Database(sqlx::Error::RowNotFound).is_transient());
        assert!(!Error::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!Error::InvalidIdentifier("a b").is_transient());
        let exhausted = Error::RetriesExhausted {
            unit_of_work: "u",
            attempts: 3,
            last: Box::new(Error::LockTimeout { detail: "x".into() }),
        };
        assert!(!exhausted.is_transient());
        assert!(exhausted.last_attempt().is_transient());
    }

    #[test]
    fn driver_errors_without_a_database_code_are_permanent() {
        assert!(matches!(
            Error::from(sqlx::Error::PoolTimedOut),
            Error::Database(_)
        ));
        assert!(matches!(
            Error::from(sqlx::Error::RowNotFound),
            Error::Database(_)
        ));
    }

    #[test]
    fn rejections_come_back_typed() {
        let err: Error = AlreadyCompleted.into();
        assert!(err.rejection::<AlreadyCompleted>().is_some());
        assert!(err.rejection::<std::io::Error>().is_none());
        assert_eq!(err.to_string(), "already completed");
    }
}
