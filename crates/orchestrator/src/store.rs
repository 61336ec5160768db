//! Everything Keel itself runs against the database, as one trait with one implementation
//! per backend (modules `postgres` and `sqlite` of this crate).
//!
//! Generic code (units of work, the dispatcher) calls these methods on its backend type
//! `B`; the statements themselves live in the backend's module and nowhere else, so no
//! code path matches on the backend at run time. Every time a decision compares (leases,
//! due times, retry times) is read from the database's clock inside the statement that
//! decides, never from the process's clock.
//!
//! The trait is public only so that the dispatcher crate can call it; it is not part of
//! Keel's API and may change in any release.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use keel_domain::EventId;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use time::OffsetDateTime;

use crate::operations::{DeadFilter, Status, Unsubscribed};
use crate::outbox::{Claim, Claimed, DeadLetter, Group, Incoming, Next, Outgoing};
use crate::{Database, DatabaseOptions, Error, Isolation, Key, Locked, RowLock};

/// The driver connection of backend `B`: `PgConnection` or `SqliteConnection`.
pub type Connection<B> = <B as sqlx::Database>::Connection;

/// A duration in whole milliseconds, as Keel's statements bind durations.
pub(crate) fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

/// How a group's commit ended ([`Store::commit_group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEnd {
    /// The done marks written and the transaction committed.
    Committed,
    /// A delivery was found done already (another process ran it): nothing committed, the
    /// transaction is left to roll back.
    AlreadyDone,
    /// The transaction is not the one begun (ended or replaced by hand): nothing
    /// committed, and the connection's state is unknown.
    Replaced,
}

/// What an optimistic version save found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// The row moved to the next version.
    Saved,
    /// The row is at another version.
    Conflict,
    /// No row has the key.
    Missing,
}

/// Keel's own statements on one backend. See the module documentation.
pub trait Store: sqlx::Database {
    /// Whether the backend has one writer at a time (SQLite): units of work of one
    /// process then queue for the write lock in the process instead of in the driver.
    const ONE_WRITER: bool;

    /// Whether [`Store::write_outbox`] is a single statement, atomic without a
    /// transaction (a standalone `send` then needs no `BEGIN`/`COMMIT`).
    const ATOMIC_OUTBOX_WRITE: bool;

    /// Checks the URL's scheme and normalises it.
    fn normalise_url(url: &str) -> Result<String, Error>;

    /// Opens the pool.
    fn open(
        url: &str,
        options: &DatabaseOptions,
    ) -> impl Future<Output = Result<sqlx::Pool<Self>, Error>> + Send;

    /// Keel's migrations for this backend: each file's name and SQL.
    const MIGRATIONS: &'static [crate::migrations::File];

    /// Runs `migrator` on the pool; `quiet`: without the server's notices (PostgreSQL's
    /// "relation … already exists, skipping" for the migrations table at every start).
    fn run_migrations(
        migrator: &Migrator,
        pool: &sqlx::Pool<Self>,
        quiet: bool,
    ) -> impl Future<Output = Result<(), sqlx::migrate::MigrateError>> + Send;

    /// Runs SQL statements written by the program (several, separated by `;`).
    fn run_script(
        conn: &mut Connection<Self>,
        sql: &'static str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Classifies a driver error of this backend (deadlock, serialization failure, lock
    /// timeout, busy); gives the error back when it is none of those.
    fn classify(error: sqlx::Error) -> Result<Error, sqlx::Error>;

    /// Calls `wake` on every notification from another process's commit until `stop`
    /// turns true; reconnects when the server restarts. Returns at once on a backend
    /// without notifications.
    fn listen(
        db: &Database<Self>,
        wake: &(dyn Fn() + Sync),
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;

    // ---- units of work -------------------------------------------------------------

    /// Called on a pooled connection before `BEGIN` when the unit of work has a lock
    /// timeout of its own.
    fn before_begin(
        conn: &mut Connection<Self>,
        lock_timeout: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Opens a unit of work's transaction on `conn`, marked with `marker` so that its end
    /// can tell whether it still is the transaction it began. `group`: `None` for a unit of
    /// work alone; for a group's transaction, whether its members run in savepoints. A
    /// group's transaction is guarded (a `COMMIT` run by hand fails), and its first member
    /// is begun too, as [`Store::member_begin`] would (in the same round trip).
    fn begin(
        conn: &mut Connection<Self>,
        isolation: Isolation,
        lock_timeout: Option<Duration>,
        marker: uuid::Uuid,
        group: Option<bool>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// After steps that recorded nothing: whether `conn` is still in the transaction
    /// [`Store::begin`] opened (not ended by hand, not swapped for another connection).
    /// `Ok(false)` when it is not. (With something to write, [`Store::write_outbox`]
    /// checks it, before writing anything.)
    fn verify(
        conn: &mut Connection<Self>,
        marker: uuid::Uuid,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Commits the transaction if it still is the one begun with `marker` at `isolation`
    /// (checked in the same round trip, unless `verified` by the outbox write just before);
    /// `Ok(false)`, without committing, when it is not.
    fn commit(
        conn: &mut Connection<Self>,
        marker: uuid::Uuid,
        isolation: Isolation,
        verified: bool,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Ends a group: marks its members' deliveries done (`marks`, by handler) and commits,
    /// if the transaction still is the one begun with `marker` and every delivery was
    /// still pending (on PostgreSQL, checks, marks and `COMMIT` in one round trip).
    /// `unchecked`: as for [`Store::member_begin`], for the last member.
    fn commit_group(
        conn: &mut Connection<Self>,
        marker: uuid::Uuid,
        marks: &[(&'static str, Vec<EventId>)],
        unchecked: bool,
    ) -> impl Future<Output = Result<GroupEnd, Error>> + Send;

    /// Rolls the transaction back.
    fn rollback(conn: &mut Connection<Self>) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether a unit of work's transaction is marked by a savepoint (SQLite): a member of
    /// a group then always runs in one, and can always be undone alone.
    const MARKS_WITH_SAVEPOINT: bool;

    /// Starts a member of a group inside the group's transaction: in a savepoint of its own
    /// when `savepoint` (or when [`Store::MARKS_WITH_SAVEPOINT`]). `unchecked`: the member
    /// before it recorded nothing, and its [`Store::verify`] comes in this round trip;
    /// `Ok(false)`, beginning nothing, when that member's steps ended the transaction.
    fn member_begin(
        conn: &mut Connection<Self>,
        savepoint: bool,
        unchecked: bool,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Undoes what the member begun last wrote, back to its savepoint.
    fn member_rollback(
        conn: &mut Connection<Self>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Called after the transaction ended when [`Store::before_begin`] ran; puts the
    /// connection's defaults back.
    fn after_end(
        conn: &mut Connection<Self>,
        options: &DatabaseOptions,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Locks one row (see [`Tx::lock`](crate::Tx::lock)).
    fn lock_row(
        conn: &mut Connection<Self>,
        lock: &RowLock,
    ) -> impl Future<Output = Result<Locked, Error>> + Send;

    /// Takes a named lock, creating its row on first use.
    fn lock_named(
        conn: &mut Connection<Self>,
        name: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Moves `table`'s row `key` from version `expected` to the next.
    fn save_version(
        conn: &mut Connection<Self>,
        table: &'static str,
        key: &Key,
        expected: i64,
    ) -> impl Future<Output = Result<Saved, Error>> + Send;

    /// Writes a unit of work's events and commands, their deliveries and ordering keys;
    /// `Ok(false)`, writing nothing, when the transaction is not the one `outgoing.marker`
    /// names. When it returns `Ok(true)` for a marker, the transaction is verified: the
    /// commit that follows need not check it again.
    fn write_outbox(
        conn: &mut Connection<Self>,
        outgoing: &Outgoing<'_>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Marks the pending deliveries of `event_ids` to `handler` done; returns how many
    /// were pending.
    fn mark_done(
        conn: &mut Connection<Self>,
        event_ids: &[EventId],
        handler: &str,
    ) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Wakes the relays of other processes after a commit that left them work
    /// (PostgreSQL `NOTIFY`); best effort.
    fn notify_relays(conn: &mut PoolConnection<Self>) -> impl Future<Output = ()> + Send;

    /// Whether a relay listens on another connection than `own` (the server's ids of this
    /// pool's own relays' listening connections); `true` when that cannot be told.
    fn others_listen(
        conn: &mut PoolConnection<Self>,
        own: &[i32],
    ) -> impl Future<Output = bool> + Send;

    /// Whether this backend can wake other processes' relays ([`Store::notify_relays`]).
    const NOTIFIES: bool;

    // ---- the delivery side -----------------------------------------------------------

    /// Claims up to `limit` due deliveries without ordering key, leased for `lease`, the
    /// earliest due first, none due before `due_from` (from the first when `None`).
    fn claim(
        db: &Database<Self>,
        limit: u32,
        lease: Duration,
        handlers: &[&str],
        due_from: Option<OffsetDateTime>,
    ) -> impl Future<Output = Result<Claimed, Error>> + Send;

    /// Claims the next commands of up to `max_keys` free ordering keys whose head (first
    /// pending command) is due and for one of `handlers`, each key once whatever its
    /// backlog: per key, its first pending commands in the key's order (commit order for
    /// ordered keys), as many as `batch_size(handler)` allows (at most `max_batch`), the key
    /// leased with them.
    fn claim_keyed(
        db: &Database<Self>,
        max_keys: u32,
        lease: Duration,
        handlers: &[&str],
        batch_size: &(dyn Fn(&str) -> usize + Sync),
        max_batch: usize,
    ) -> impl Future<Output = Result<Vec<Group>, Error>> + Send;

    /// Records `subscriptions` ((message name, handler name) pairs) as run by a relay, so
    /// that every outbox write, whichever process makes it, creates their deliveries.
    fn subscribe(
        db: &Database<Self>,
        subscriptions: &[(&str, &str)],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Extends the leases of `claims` (and of their key); returns, per claim, whether it
    /// is still this claim's.
    fn renew(
        db: &Database<Self>,
        claims: &[Claim],
        key: Option<&str>,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<bool>, Error>> + Send;

    /// Gives back the leases of `claims` that were never started (a stopping process):
    /// due again at once for any relay, their attempt not counted.
    fn release(
        db: &Database<Self>,
        claims: &[Claim],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Ends a group's hold on its ordering key.
    fn release_key(
        db: &Database<Self>,
        key: &str,
        token: uuid::Uuid,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Marks deliveries done for several handlers at once.
    fn mark_done_many(
        db: &Database<Self>,
        by_handler: &BTreeMap<&str, Vec<EventId>>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Records a failed attempt, if the delivery is still `claim`'s, and schedules the next
    /// one or moves the delivery to the dead letter.
    fn record_failure(
        db: &Database<Self>,
        claim: &Claim,
        error: &str,
        next: Next,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Creates the delivery rows of up to `limit` events written without routing;
    /// returns how many events were routed.
    fn route_unrouted(
        db: &Database<Self>,
        limit: u32,
        handlers_for: &(dyn Fn(&str) -> Vec<&'static str> + Sync),
    ) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Writes messages received from another system for `handler`, in one transaction:
    /// each event once (by id), and its delivery to `handler` unless it exists or is done
    /// (those marked dead go to the dead letter). Returns the deliveries created.
    fn accept(
        db: &Database<Self>,
        handler: &str,
        incoming: &[Incoming],
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Whether any delivery to one of `handlers` is pending, or any event unrouted.
    fn any_unfinished(
        db: &Database<Self>,
        handlers: &[&str],
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Removes up to `limit` done deliveries finished more than `done_older_than` ago and
    /// dead ones given up more than `dead_older_than` ago (`None`: none), their error
    /// history, events left without deliveries, and up to `limit` ordering keys unused for an
    /// hour with nothing pending; then recreates the key rows of pending commands that lack
    /// one. Returns the rows removed.
    fn purge(
        db: &Database<Self>,
        done_older_than: Option<Duration>,
        dead_older_than: Option<Duration>,
        limit: u32,
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    // ---- the dead letter ---------------------------------------------------------------

    /// The dead deliveries `filter` selects, oldest first.
    fn dead_find(
        db: &Database<Self>,
        filter: &DeadFilter,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, Error>> + Send;

    /// How many deliveries are dead.
    fn dead_count(db: &Database<Self>) -> impl Future<Output = Result<i64, Error>> + Send;

    /// One dead delivery.
    fn dead_show(
        db: &Database<Self>,
        event_id: EventId,
        handler: &str,
    ) -> impl Future<Output = Result<Option<DeadLetter>, Error>> + Send;

    /// Creates, for `handler` of the message named `message`, the deliveries its events
    /// written since `since` lack (the events still kept), those it has done too when
    /// `again`; returns how many.
    fn backfill(
        db: &Database<Self>,
        message: &str,
        handler: &str,
        since: time::OffsetDateTime,
        again: bool,
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Puts a dead delivery back in the queue; `false` if it is not dead.
    fn dead_retry(
        db: &Database<Self>,
        event_id: EventId,
        handler: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Removes a dead delivery and its history; `false` if it is not dead.
    fn dead_discard(
        db: &Database<Self>,
        event_id: EventId,
        handler: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

// ---- operators ---------------------------------------------------------------------

/// What operators read; see [`crate::operations`].
pub trait Operations: sqlx::Database {
    /// Records that `process` (on `host`, with `pid`) runs a relay and is alive; removes
    /// relays silent for a day.
    fn heartbeat(
        db: &Database<Self>,
        process: &str,
        host: &str,
        pid: u32,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Removes `process` from the relays (its relay stopped cleanly).
    fn forget_relay(
        db: &Database<Self>,
        process: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The deliveries per handler, the unrouted events and the relays, read in one snapshot.
    fn status(db: &Database<Self>) -> impl Future<Output = Result<Status, Error>> + Send;

    /// Every (message, handler) subscription recorded.
    fn subscriptions(
        db: &Database<Self>,
    ) -> impl Future<Output = Result<Vec<(String, String)>, Error>> + Send;

    /// Removes `handler`'s subscriptions and its pending deliveries (their error history,
    /// and their events when nothing else refers to them), in one transaction; its dead
    /// deliveries stay.
    fn unsubscribe(
        db: &Database<Self>,
        handler: &str,
    ) -> impl Future<Output = Result<Unsubscribed, Error>> + Send;

    /// The versions of Keel's migrations applied, or `None` when the database has no Keel
    /// migration table.
    fn applied_migrations(
        db: &Database<Self>,
    ) -> impl Future<Output = Result<Option<Vec<i64>>, Error>> + Send;
}

/// Warns about handler names subscribed to two messages: `(handler, its other message,
/// the message subscribed now)`.
pub(crate) fn warn_clashes(clashes: &[(String, String, String)]) {
    for (handler, other, message) in clashes {
        tracing::warn!(
            handler = %handler, message = %message, other_message = %other,
            "another process on this database subscribed a handler of the same name to another \
             message: each would take the other's deliveries; name them apart"
        );
    }
}
