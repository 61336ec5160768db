//! The transaction handle the steps of a unit of work receive.

use std::collections::BTreeMap;

use keel_domain::{Aggregate, Command, DomainEvent, Envelope, EventId, Version};

use crate::lock::is_identifier;
use crate::options::Cause;
use crate::outbox::{Routing, Sent};
use crate::store::Saved;
use crate::{Backend, Error, Key, Locked, RowLock};

/// The open transaction of one unit of work attempt: the only way its steps reach the
/// database.
///
/// A `Tx` is lent to the closure of [`Database::unit_of_work`](crate::Database::unit_of_work)
/// for one attempt and cannot outlive it. Run sqlx queries on [`Tx::conn`]; use the helpers
/// for locks and optimistic versions.
///
/// [`Tx::conn`] is the driver's own connection (`&mut PgConnection` on PostgreSQL,
/// `&mut SqliteConnection` on SQLite), inside the unit of work's transaction: native types,
/// `FromRow`, `query!` and existing repository functions take it as they are.
pub struct Tx<'c, B: Backend> {
    conn: &'c mut B::Connection,
    attempt: u32,
    cause: Option<Cause>,
    routing: Option<&'c dyn Routing>,
    events: Vec<Envelope>,
    commands: Vec<Sent>,
    headers: BTreeMap<String, String>,
}

impl<B: Backend> std::fmt::Debug for Tx<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("backend", &B::NAME)
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
    crate::trace::capture(&mut envelope.headers);
    Ok(Sent {
        envelope,
        key: command.key(),
        ordered: C::ORDERED,
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

impl<'c, B: Backend> Tx<'c, B> {
    pub(crate) fn new(
        conn: &'c mut B::Connection,
        attempt: u32,
        cause: Option<Cause>,
        routing: Option<&'c dyn Routing>,
    ) -> Self {
        Tx {
            conn,
            attempt,
            cause,
            routing,
            events: Vec::new(),
            commands: Vec::new(),
            headers: BTreeMap::new(),
        }
    }

    pub(crate) fn into_outgoing(self) -> (Vec<Envelope>, Vec<Sent>) {
        let (mut events, mut commands) = (self.events, self.commands);
        if !self.headers.is_empty() {
            let envelopes = events
                .iter_mut()
                .chain(commands.iter_mut().map(|c| &mut c.envelope));
            for envelope in envelopes {
                // Set by the application: wins over a captured trace context, whose state
                // goes with it.
                if self.headers.contains_key(crate::trace::TRACEPARENT)
                    && !self.headers.contains_key(crate::trace::TRACESTATE)
                {
                    envelope.headers.remove(crate::trace::TRACESTATE);
                }
                for (name, value) in &self.headers {
                    envelope.headers.insert(name.clone(), value.clone());
                }
            }
        }
        (events, commands)
    }

    /// Adds the header `name` to every event and command this unit of work records or
    /// sends, before or after this call ([`Envelope::headers`]): stored with them, handed
    /// to their handlers and carried across a broker. A trace context (`traceparent`)
    /// is the usual one.
    ///
    /// Fails, as a rejection, for a name or value that could not travel
    /// ([`Envelope::header_problem`]: a reserved `Nats-`/`Keel-` name, a `:`, a line
    /// break).
    pub fn header(
        &mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), Error> {
        let (name, value) = (name.into(), value.into());
        if let Some(problem) = Envelope::header_problem(&name, &value) {
            return Err(Error::rejected(std::io::Error::other(problem)));
        }
        self.headers.insert(name, value);
        Ok(())
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
    /// Returns the command's id, by which the dead letter finds it if its handler refuses
    /// it. Fails with [`Error::NoCommandHandler`] when this database handle knows the
    /// handlers (it belongs to an app) and none is registered for the command.
    pub fn send<C: Command>(&mut self, command: C) -> Result<EventId, Error> {
        let sent = self.prepare(&command)?;
        let id = sent.envelope.id;
        self.commands.push(sent);
        Ok(id)
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
            ordered: C::ORDERED,
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
    /// # mod keel { pub use keel_domain::DomainEvent; pub use keel_orchestrator::{Database, Error}; }
    /// # use keel::{Database, Error};
    /// # use keel::DomainEvent;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct PostLiked { post_id: i64 }
    /// # impl DomainEvent for PostLiked { const NAME: &'static str = "post.liked.v1";
    /// #   const AGGREGATE_TYPE: &'static str = "Post";
    /// #   fn aggregate_id(&self) -> String { self.post_id.to_string() } }
    /// # async fn run(mut db: Database<sqlx::Postgres>) -> Result<(), Error> {
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
        let mut envelope = self.caused(envelope);
        crate::trace::capture(&mut envelope.headers);
        self.events.push(envelope);
        Ok(())
    }

    /// The events recorded so far by this attempt, read-only: they are released by commit,
    /// never from an open transaction.
    pub fn recorded(&self) -> &[Envelope] {
        &self.events
    }

    /// The transaction's connection, the driver's own (`&mut PgConnection`,
    /// `&mut SqliteConnection`), to run sqlx queries on:
    /// `sqlx::query!("…", x).execute(tx.conn()).await?`.
    pub fn conn(&mut self) -> &mut B::Connection {
        self.conn
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
    /// # mod keel { pub use keel_orchestrator::{Database, Error, Locked, RowLock}; }
    /// # use keel::{Database, Error, Locked, RowLock};
    /// # async fn run(mut db: Database<sqlx::Postgres>) -> Result<(), Error> {
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
        B::lock_row(self.conn, &lock).await
    }

    /// Takes the named lock `name` until the unit of work ends, creating it on first use.
    ///
    /// Units of work that lock the same name run one after the other, even when the name
    /// has never been locked before and many of them ask at the same moment. Use it to
    /// serialize work on something that has no row of its own (an import, a user's quota).
    pub async fn lock_named(&mut self, name: &str) -> Result<(), Error> {
        B::lock_named(self.conn, name).await
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
        match B::save_version(self.conn, table, &key, expected.get()).await? {
            Saved::Saved => Ok(expected.next()),
            Saved::Conflict => Err(Error::VersionConflict {
                aggregate: A::TYPE,
                id: key.to_string(),
                expected,
            }),
            Saved::Missing => Err(Error::Database(sqlx::Error::RowNotFound)),
        }
    }
}
