//! The statements of a unit of work on Postgres: begin, verify, commit, locks, versions, the
//! processed marker.

use std::fmt::Write as _;
use std::time::Duration;

use keel_domain::EventId;
use sqlx::postgres::{PgArguments, PgConnection, PgDatabaseError};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres};

use crate::lock::{LockMode, is_identifier};
use crate::store::{GroupEnd, Saved};
use crate::{Error, Isolation, Key, LockWait, Locked, RowLock};

/// The setting that marks a unit of work's transaction (`SET LOCAL`, so it ends with it).
pub(super) const MARKER: &str = "keel.unit_of_work";

/// What the steps may have changed in the session (`SET` without `LOCAL`, `LISTEN`), undone
/// after each commit; settings given at connection time are kept.
macro_rules! reset {
    () => {
        "RESET ALL; UNLISTEN *"
    };
}

/// `transaction_isolation`'s value for `isolation`.
pub(super) fn isolation_level(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::ReadCommitted => "read committed",
        Isolation::RepeatableRead => "repeatable read",
        Isolation::Serializable => "serializable",
    }
}

/// The setting whose lookup fails when a unit of work's transaction is not the one begun.
pub(super) const REPLACED: &str = "keel.transaction_replaced";

pub(super) fn is_replaced(error: &sqlx::Error) -> bool {
    fails_on(error, REPLACED)
}

/// The setting whose lookup fails when a group finds one of its deliveries done already.
const ALREADY_DONE: &str = "keel.delivery_already_done";

/// Whether `error` is the failed lookup of `setting`, a check's way to stop a simple query.
fn fails_on(error: &sqlx::Error, setting: &str) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<PgDatabaseError>())
        .is_some_and(|pg| pg.code() == "42704" && pg.message().contains(setting))
}

fn bind_key<'q>(
    query: Query<'q, Postgres, PgArguments>,
    key: &Key,
) -> Query<'q, Postgres, PgArguments> {
    match key {
        Key::Int(i) => query.bind(*i),
        Key::Text(s) => query.bind(s.clone()),
        Key::Uuid(u) => query.bind(*u),
    }
}

fn lock_sql(lock: &RowLock) -> String {
    let mode = match lock.mode {
        LockMode::ForUpdate => "FOR UPDATE",
        LockMode::ForShare => "FOR SHARE",
    };
    let wait = match lock.wait {
        LockWait::Wait => "",
        LockWait::NoWait => " NOWAIT",
        LockWait::SkipLocked => " SKIP LOCKED",
    };
    format!(
        "SELECT 1 FROM {} WHERE {} = $1 {mode}{wait}",
        lock.table, lock.key_column
    )
}

/// Before an optimistic group's `BEGIN`, in a transaction of its own: the session's
/// transactions are read-only by default until the group's end resets it. The group's
/// transaction is begun `READ WRITE`; if a member ends it by hand (`ROLLBACK`), the next
/// members' statements would each commit on their own, outside the group, and now fail
/// instead: the group is undone and its members run again alone. (With savepoints, the
/// next member's `SAVEPOINT` fails outside a transaction.) `client_min_messages` keeps
/// PostgreSQL from warning that the `COMMIT` of an implicit transaction has none in
/// progress.
const OPTIMISTIC_GROUP_DEFAULT: &str = "SET default_transaction_read_only = on; \
     SET LOCAL client_min_messages = error; COMMIT; ";

/// `BEGIN`, the marker and the lock timeout in one round trip (a simple query).
///
/// A group's transaction (`group`: whether its members run in savepoints) also holds a row
/// of `keel_group_guard`, which makes any `COMMIT` but the group's own fail (migration
/// `0014_group_guard.sql`), and begins its first member. An optimistic group's is also
/// protected against a `ROLLBACK` by hand ([`OPTIMISTIC_GROUP_DEFAULT`]).
pub(super) async fn begin(
    conn: &mut PgConnection,
    isolation: Isolation,
    lock_timeout: Option<Duration>,
    marker: uuid::Uuid,
    group: Option<bool>,
) -> Result<(), Error> {
    let begin = match isolation {
        Isolation::ReadCommitted => "BEGIN",
        Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
        Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
    };
    let mut sql = String::with_capacity(320);
    if group == Some(false) {
        sql.push_str(OPTIMISTIC_GROUP_DEFAULT);
        sql.push_str(begin);
        sql.push_str(" READ WRITE");
    } else {
        sql.push_str(begin);
    }
    sql.push_str("; SET LOCAL ");
    sql.push_str(MARKER);
    sql.push_str(" = '");
    sql.push_str(
        marker
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    sql.push('\'');
    if let Some(timeout) = lock_timeout {
        sql.push_str(&format!(
            "; SET LOCAL lock_timeout = '{}ms'",
            timeout.as_millis().max(1)
        ));
    }
    if let Some(savepoint) = group {
        sql.push_str(&format!("; SELECT keel_guard_group('{marker}')"));
        if savepoint {
            sql.push_str("; ");
            sql.push_str(SAVEPOINT);
        }
    }
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await?;
    Ok(())
}

/// A check and `COMMIT` in one simple query: when the check fails, PostgreSQL skips
/// the rest of the query, so the transaction is not committed. After the commit, session
/// settings and listens the steps may have made (`SET` without `LOCAL`, `LISTEN`) are reset
/// in the same round trip, so they never leak to the next unit of work on this pooled
/// connection (settings given at connection time are kept).
pub(super) async fn commit(
    conn: &mut PgConnection,
    marker: uuid::Uuid,
    isolation: Isolation,
    verified: bool,
) -> Result<bool, Error> {
    if verified {
        sqlx::raw_sql(concat!("COMMIT; ", reset!()))
            .execute(conn)
            .await?;
        return Ok(true);
    }
    let mut sql = check(marker, isolation);
    sql.push_str(concat!("COMMIT; ", reset!()));
    match sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await {
        Ok(_) => Ok(true),
        Err(error) if is_replaced(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// The statement that stops a simple query unless its transaction is the one begun with
/// `marker` at `isolation`. `current_setting` of an unknown name raises: a check that fails
/// at execution, never at planning (constant folding would evaluate a failing cast too
/// early).
fn check(marker: uuid::Uuid, isolation: Isolation) -> String {
    let level = isolation_level(isolation);
    format!(
        "SELECT CASE WHEN current_setting('{MARKER}', true) = '{marker}'
                      AND current_setting('transaction_isolation') = '{level}'
                 THEN '' ELSE current_setting('{REPLACED}') END; "
    )
}

/// A group's end in one round trip: the check of [`commit`], then each handler's done
/// marks, each stopping the query unless every one of its deliveries was still pending,
/// then `COMMIT` and the reset. The marks are the statements [`mark_done`] prepares,
/// spelled with literals: a simple query takes no parameters.
pub(super) async fn commit_group(
    conn: &mut PgConnection,
    marker: uuid::Uuid,
    marks: &[(&'static str, Vec<EventId>)],
) -> Result<GroupEnd, Error> {
    let mut sql = check(marker, Isolation::default());
    sql.push_str(&format!("SELECT keel_unguard_group('{marker}'); "));
    for (handler, event_ids) in marks {
        let _ = write!(
            sql,
            "SELECT CASE WHEN keel_mark_done({}, '{{",
            literal(handler)
        );
        for (n, id) in event_ids.iter().enumerate() {
            let _ = write!(sql, "{}{id}", if n == 0 { "" } else { "," });
        }
        let _ = write!(
            sql,
            "}}'::uuid[], false) = {} THEN '' ELSE current_setting('{ALREADY_DONE}') END; ",
            event_ids.len()
        );
    }
    sql.push_str(concat!("COMMIT; ", reset!()));
    match sqlx::raw_sql(AssertSqlSafe(sql)).execute(conn).await {
        Ok(_) => Ok(GroupEnd::Committed),
        Err(error) if is_replaced(&error) => Ok(GroupEnd::Replaced),
        Err(error) if fails_on(&error, ALREADY_DONE) => Ok(GroupEnd::AlreadyDone),
        Err(error) => Err(error.into()),
    }
}

/// `text` as an SQL string literal, whatever `standard_conforming_strings` says (an `E''`
/// string always reads backslashes as escapes).
fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// `ROLLBACK`, and the reset of what a group's transaction set for the session before it
/// began ([`OPTIMISTIC_GROUP_DEFAULT`]), as its commit resets it.
pub(super) async fn rollback(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::raw_sql(concat!("ROLLBACK; ", reset!()))
        .execute(conn)
        .await?;
    Ok(())
}

const SAVEPOINT: &str = "SAVEPOINT keel_member";

/// A group member's savepoint. Members take turns, so the name is reused: `ROLLBACK TO`
/// names the newest one, the running member's.
pub(super) async fn savepoint(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::raw_sql(SAVEPOINT).execute(conn).await?;
    Ok(())
}

pub(super) async fn rollback_to_savepoint(conn: &mut PgConnection) -> Result<(), Error> {
    sqlx::raw_sql("ROLLBACK TO SAVEPOINT keel_member")
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) async fn lock_row(conn: &mut PgConnection, lock: &RowLock) -> Result<Locked, Error> {
    let found = bind_key(sqlx::query(AssertSqlSafe(lock_sql(lock))), &lock.key)
        .fetch_optional(&mut *conn)
        .await;
    match found {
        Ok(Some(_)) => return Ok(Locked::Acquired),
        Ok(None) => {}
        Err(e) => {
            return Err(match (lock.wait, Error::from(e)) {
                (LockWait::NoWait, Error::LockTimeout { .. }) => Error::RowLocked {
                    table: lock.table,
                    key: lock.key.to_string(),
                },
                (_, e) => e,
            });
        }
    }
    if lock.wait == LockWait::SkipLocked {
        let exists = bind_key(sqlx::query(AssertSqlSafe(lock.exists_sql())), &lock.key)
            .fetch_optional(&mut *conn)
            .await?;
        if exists.is_some() {
            return Ok(Locked::Skipped);
        }
    }
    Ok(Locked::Missing)
}

pub(super) async fn lock_named(conn: &mut PgConnection, name: &str) -> Result<(), Error> {
    const LOCK: &str = "SELECT 1 FROM keel_locks WHERE name = $1 FOR UPDATE";
    if sqlx::query(LOCK)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .is_some()
    {
        return Ok(());
    }
    // A concurrent creator's uncommitted row makes this insert wait until that
    // transaction ends; then the conflict is ignored and the lock below is granted.
    let created = sqlx::query(
        "INSERT INTO keel_locks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING 1",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    if created.is_some() {
        return Ok(());
    }
    match sqlx::query(LOCK)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
    {
        Some(_) => Ok(()),
        // Only under REPEATABLE READ / SERIALIZABLE: the row committed after this
        // transaction's snapshot. A fresh attempt sees it.
        None => Err(Error::LockTimeout {
            detail: format!("named lock `{name}` was created concurrently; retrying"),
        }),
    }
}

pub(super) async fn save_version(
    conn: &mut PgConnection,
    table: &'static str,
    key: &Key,
    expected: i64,
) -> Result<Saved, Error> {
    debug_assert!(is_identifier(table));
    // One round trip: the update, and whether the row exists at all.
    let sql = format!(
        "WITH u AS (UPDATE {table} SET version = version + 1
                    WHERE id = $1 AND version = $2 RETURNING 1)
         SELECT (SELECT count(*) FROM u) AS saved,
                EXISTS (SELECT 1 FROM {table} WHERE id = $1) AS present"
    );
    let (saved, present): (i64, bool) = bind_key(sqlx::query(AssertSqlSafe(sql)), key)
        .bind(expected)
        .try_map(|row: sqlx::postgres::PgRow| {
            use sqlx::Row;
            Ok((row.try_get(0)?, row.try_get(1)?))
        })
        .fetch_one(conn)
        .await?;
    Ok(match (saved, present) {
        (1, _) => Saved::Saved,
        (_, true) => Saved::Conflict,
        (_, false) => Saved::Missing,
    })
}

pub(super) async fn mark_done(
    conn: &mut PgConnection,
    event_ids: &[EventId],
    handler: &str,
) -> Result<usize, Error> {
    Ok(mark_done_sql(conn, false, event_ids, handler).await? as usize)
}

/// Marks done outside any transaction, in a statement of its own: a plain append to
/// `keel_done`, which spares the conflict check of every row (a speculative insertion costs
/// an index probe and a second WAL record per row). A delivery done twice (a backfill of
/// events already delivered) makes the append fail as a whole; it is then written again
/// with the conflict check, which keeps the latest attempt count.
pub(super) async fn mark_done_alone(
    conn: &mut PgConnection,
    event_ids: &[EventId],
    handler: &str,
) -> Result<usize, Error> {
    match mark_done_sql(&mut *conn, true, event_ids, handler).await {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            mark_done(conn, event_ids, handler).await
        }
        done => Ok(done? as usize),
    }
}

/// Moves pending deliveries to the done log (`append`: without the conflict check), each
/// looked up by key whatever the table's statistics say (`keel_mark_done`, migrations
/// `0010_mark_done.sql` and `0012_generic_plans.sql`: one set-based statement, its plan
/// pinned by settings and kept for the session).
async fn mark_done_sql(
    conn: &mut PgConnection,
    append: bool,
    event_ids: &[EventId],
    handler: &str,
) -> Result<i64, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = event_ids.iter().map(|id| *id.as_uuid()).collect();
    sqlx::query_scalar("SELECT keel_mark_done($1, $2, $3)")
        .bind(handler)
        .bind(ids)
        .bind(append)
        .fetch_one(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("plain"), "E'plain'");
        assert_eq!(literal(r"it's a\b"), r"E'it''s a\\b'");
    }

    #[test]
    fn lock_sql_spells_each_mode() {
        let sql = lock_sql(&RowLock::for_share("posts", 1).skip_locked());
        assert_eq!(
            sql,
            "SELECT 1 FROM posts WHERE id = $1 FOR SHARE SKIP LOCKED"
        );
        let sql = lock_sql(
            &RowLock::for_update("posts", "x")
                .key_column("slug")
                .nowait(),
        );
        assert_eq!(sql, "SELECT 1 FROM posts WHERE slug = $1 FOR UPDATE NOWAIT");
    }
}
