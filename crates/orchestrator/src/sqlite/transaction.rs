//! The statements of a unit of work on SQLite: begin, verify, commit, locks, versions, the
//! processed marker.

use keel_domain::EventId;
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite};

use super::{CHUNK, now_ms, savepoint};
use crate::lock::is_identifier;
use crate::store::{GroupEnd, Saved};
use crate::{Error, Key, Locked, RowLock};

fn bind_key<'q>(
    query: Query<'q, Sqlite, SqliteArguments>,
    key: &Key,
) -> Query<'q, Sqlite, SqliteArguments> {
    match key {
        Key::Int(i) => query.bind(*i),
        Key::Text(s) => query.bind(s.clone()),
        Key::Uuid(u) => query.bind(u.to_string()),
    }
}

/// `BEGIN IMMEDIATE` takes the write lock up front, so two writers never deadlock
/// upgrading a read lock (SQLite transactions are serializable). The savepoint marks
/// the transaction: it vanishes with a `COMMIT` or `ROLLBACK` run by hand, and another
/// connection does not have it. A group's transaction (`group`) also holds the row of
/// `keel_group_guard` (a temporary table of each connection, see `open`), whose missing
/// reference makes any `COMMIT` but the group's own fail; it is written before the
/// savepoint, so a member rolled back to it keeps the guard. Its statements have a fixed
/// text, kept prepared by the driver (a connection runs one transaction at a time).
pub(super) async fn begin(conn: &mut SqliteConnection, group: bool) -> Result<(), Error> {
    if group {
        sqlx::query(concat!(
            "BEGIN IMMEDIATE; INSERT INTO keel_group_guard (marker, missing) ",
            "VALUES ('group', ''); SAVEPOINT ",
            savepoint!()
        ))
        .execute(conn)
        .await?;
    } else {
        sqlx::raw_sql(concat!("BEGIN IMMEDIATE; SAVEPOINT ", savepoint!()))
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// A group member's marker, which [`verify`] releases like a unit of work's own; when the
/// member before it is `unchecked`, its release comes first, in the same batch: `Ok(false)`
/// when that member's steps ended the transaction.
pub(super) async fn member_begin(
    conn: &mut SqliteConnection,
    unchecked: bool,
) -> Result<bool, Error> {
    let sql = if unchecked {
        concat!("RELEASE ", savepoint!(), "; SAVEPOINT ", savepoint!())
    } else {
        concat!("SAVEPOINT ", savepoint!())
    };
    match sqlx::raw_sql(sql).execute(conn).await {
        Ok(_) => Ok(true),
        Err(error) if is_unmarked(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Whether `error` says the unit of work's savepoint is gone: its transaction ended.
fn is_unmarked(error: &sqlx::Error) -> bool {
    error.to_string().contains("no such savepoint")
}

/// `ROLLBACK TO` keeps the savepoint; the release ends it.
pub(super) async fn member_rollback(conn: &mut SqliteConnection) -> Result<(), Error> {
    sqlx::raw_sql(concat!(
        "ROLLBACK TO ",
        savepoint!(),
        "; RELEASE ",
        savepoint!()
    ))
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn verify(conn: &mut SqliteConnection) -> Result<bool, Error> {
    match sqlx::raw_sql(concat!("RELEASE ", savepoint!()))
        .execute(conn)
        .await
    {
        Ok(_) => Ok(true),
        Err(error) if is_unmarked(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// A group's end: the last member's release when it is `unchecked`, every done mark in one
/// batch (several when the marks exceed a chunk), then `COMMIT`. The release is a round
/// trip of its own: in a batch, a statement that is not a write reports the changes of
/// the write before it, which would blur the count of marks.
pub(super) async fn commit_group(
    conn: &mut SqliteConnection,
    marks: &[(&'static str, Vec<EventId>)],
    unchecked: bool,
) -> Result<GroupEnd, Error> {
    if unchecked && !verify(&mut *conn).await? {
        return Ok(GroupEnd::Replaced);
    }
    let mut batches = Vec::new();
    let mut batch = QueryBuilder::<Sqlite>::new("");
    // Deliveries in the batch being built (chunks are never empty).
    let mut in_batch = 0;
    let mut expected = 0;
    for (handler, event_ids) in marks {
        for chunk in event_ids.chunks(CHUNK) {
            if in_batch > 0 && in_batch + chunk.len() > CHUNK {
                batches.push(std::mem::replace(&mut batch, QueryBuilder::new("")));
                in_batch = 0;
            }
            if in_batch > 0 {
                batch.push("; ");
            }
            push_marks(&mut batch, handler, chunk);
            in_batch += chunk.len();
            expected += chunk.len() as u64;
        }
    }
    if in_batch > 0 {
        batches.push(batch);
    }
    let mut changes = 0;
    for mut batch in batches {
        changes += batch.build().execute(&mut *conn).await?.rows_affected();
    }
    // Two changes per mark (see `mark_done`).
    if changes != 2 * expected {
        return Ok(GroupEnd::AlreadyDone);
    }
    sqlx::query("DELETE FROM keel_group_guard WHERE marker = 'group'; COMMIT")
        .execute(conn)
        .await?;
    Ok(GroupEnd::Committed)
}

pub(super) async fn commit(conn: &mut SqliteConnection) -> Result<bool, Error> {
    sqlx::raw_sql("COMMIT").execute(conn).await?;
    Ok(true)
}

pub(super) async fn rollback(conn: &mut SqliteConnection) -> Result<(), Error> {
    sqlx::raw_sql("ROLLBACK").execute(conn).await?;
    Ok(())
}

/// The write lock taken by `BEGIN IMMEDIATE` already covers every row: the lock is
/// granted at once and tells whether the row exists.
pub(super) async fn lock_row(conn: &mut SqliteConnection, lock: &RowLock) -> Result<Locked, Error> {
    let found = bind_key(sqlx::query(AssertSqlSafe(lock.exists_sql())), &lock.key)
        .fetch_optional(conn)
        .await?;
    Ok(if found.is_some() {
        Locked::Acquired
    } else {
        Locked::Missing
    })
}

pub(super) async fn lock_named(conn: &mut SqliteConnection, name: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO keel_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) async fn save_version(
    conn: &mut SqliteConnection,
    table: &'static str,
    key: &Key,
    expected: i64,
) -> Result<Saved, Error> {
    debug_assert!(is_identifier(table));
    let sql = format!("UPDATE {table} SET version = version + 1 WHERE id = $1 AND version = $2");
    let result = bind_key(sqlx::query(AssertSqlSafe(sql)), key)
        .bind(expected)
        .execute(&mut *conn)
        .await?;
    if result.rows_affected() == 1 {
        return Ok(Saved::Saved);
    }
    let sql = format!("SELECT 1 FROM {table} WHERE id = $1");
    let exists = bind_key(sqlx::query(AssertSqlSafe(sql)), key)
        .fetch_optional(conn)
        .await?;
    Ok(if exists.is_some() {
        Saved::Conflict
    } else {
        Saved::Missing
    })
}

pub(super) async fn mark_done(
    conn: &mut SqliteConnection,
    event_ids: &[EventId],
    handler: &str,
) -> Result<usize, Error> {
    let mut done = 0;
    for chunk in event_ids.chunks(CHUNK) {
        let mut batch = QueryBuilder::<Sqlite>::new("");
        push_marks(&mut batch, handler, chunk);
        done += batch.build().execute(&mut *conn).await?.rows_affected() as usize / 2;
    }
    Ok(done)
}

/// The done marks of `event_ids` to `handler` as two statements of a batch (one hand-off
/// to the connection's thread). One writer: the append and the delete see the same rows,
/// one change each (an append that updates a conflicting row counts once), so the
/// statements make two changes per delivery marked.
fn push_marks(batch: &mut QueryBuilder<Sqlite>, handler: &str, event_ids: &[EventId]) {
    batch.push(
        "INSERT INTO keel_done (event_id, handler, attempts) \
         SELECT event_id, handler, attempts FROM keel_deliveries",
    );
    pending_of(batch, handler, event_ids);
    batch.push(concat!(
        " ON CONFLICT (event_id, handler) DO UPDATE SET attempts = excluded.attempts, \
         done_at = ",
        now_ms!(),
        "; DELETE FROM keel_deliveries"
    ));
    pending_of(batch, handler, event_ids);
}

/// ` WHERE` the pending deliveries of `event_ids` to `handler`.
fn pending_of(query: &mut QueryBuilder<Sqlite>, handler: &str, event_ids: &[EventId]) {
    query
        .push(" WHERE status = 'pending' AND handler = ")
        .push_bind(handler)
        .push(" AND event_id IN (");
    let mut ids = query.separated(", ");
    for id in event_ids {
        ids.push_bind(id.to_string());
    }
    query.push(")");
}
