//! The write side of the transactional outbox.
//!
//! Events recorded by a unit of work are written in its transaction, just before `COMMIT`:
//! one `keel_events` row per event, and one `keel_deliveries` row per (event, handler)
//! when the database handle knows the handlers ([`Routing`]). They commit or vanish with
//! the unit of work's own writes, so a committed event is never lost and a rolled-back one
//! never exists. The read side (claiming, delivering, the dead letter) is the dispatcher's.
//!
//! When the process will deliver the events itself right after commit (its *fast path*),
//! the delivery rows are written already leased to it, so no relay picks them up
//! meanwhile; if the process dies, the lease expires and any relay delivers them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_domain::Envelope;
use sqlx::{AnyConnection, AssertSqlSafe};

use crate::{Backend, Db, Error};

/// The channel PostgreSQL relays listen on; a unit of work notifies it when it leaves
/// deliveries for a relay.
///
/// The notification is sent right *after* the commit, not inside the transaction: a
/// PostgreSQL transaction that has issued `NOTIFY` commits under a database-wide lock, which
/// would serialize every producing transaction's commit (and its WAL flush). A relay that
/// misses a notification (its listener was reconnecting) finds the rows at its next poll.
pub const NOTIFY_CHANNEL: &str = "keel_outbox";

/// Wakes the PostgreSQL relays listening on [`NOTIFY_CHANNEL`]; best effort.
pub(crate) async fn notify_relays(conn: &mut AnyConnection) {
    let notified = sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *conn)
        .await;
    if let Err(error) = notified {
        tracing::debug!(%error, "could not notify relays; they will find the rows when they poll");
    }
}

/// Delivery status: to deliver.
pub const PENDING: &str = "pending";
/// Delivery status: delivered.
pub const DONE: &str = "done";
/// Delivery status: given up; kept in the dead letter.
pub const DEAD: &str = "dead";

/// Milliseconds since the Unix epoch, the unit of every time column of the outbox.
///
/// Leases compare times written by different processes: their clocks must agree to well
/// within a lease (NTP is enough).
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Which handlers the events of a unit of work are delivered to, and whether this
/// process delivers them itself right after commit.
///
/// Installed on a [`Database`](crate::Database) handle by the dispatcher
/// ([`Database::with_routing`](crate::Database::with_routing)); without it, events are
/// written unrouted and a relay routes them.
pub trait Routing: Send + Sync + 'static {
    /// The names of the handlers of the event named `event` (empty if none).
    fn handlers_for(&self, event: &str) -> &[&'static str];

    /// How long deliveries written by this process are reserved for its fast path, or
    /// `None` if it leaves them all to relays.
    fn fast_path_lease(&self) -> Option<Duration>;

    /// Called after a commit that left deliveries for relays (commands, unrouted events),
    /// so that a relay of this process can start at once.
    fn left_for_relay(&self) {}
}

/// A command sent by a unit of work, with its ordering key.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) envelope: Envelope,
    pub(crate) key: Option<String>,
}

/// What the outbox write decided for the fast path: the lease token of the deliveries
/// reserved for this process, if any.
pub(crate) struct Written {
    pub(crate) lease_token: Option<String>,
    pub(crate) left_for_relay: bool,
}

/// Rows per multi-row `INSERT` (well under both backends' bind-parameter limits).
const CHUNK: usize = 500;

/// Bind parameters in one statement, under PostgreSQL's limit of 65,535.
const MAX_PARAMS: usize = 30_000;

fn placeholders(rows: usize, columns: usize) -> String {
    placeholders_from(1, rows, columns)
}

fn placeholders_from(first: usize, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push(',');
            }
            sql.push('$');
            sql.push_str(&(first + row * columns + column).to_string());
        }
        sql.push(')');
    }
    sql
}

/// A value bound to an outbox statement.
enum Value {
    Text(String),
    MaybeText(Option<String>),
    Int(i64),
    MaybeInt(Option<i64>),
    Small(i32),
    Flag(bool),
}

/// The rows of one multi-row `INSERT`.
struct Insert {
    into: &'static str,
    columns: usize,
    tail: &'static str,
    rows: Vec<Vec<Value>>,
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, Db, sqlx::any::AnyArguments>,
    values: impl Iterator<Item = &'q Value>,
) -> sqlx::query::Query<'q, Db, sqlx::any::AnyArguments> {
    for value in values {
        query = match value {
            Value::Text(v) => query.bind(v.as_str()),
            Value::MaybeText(v) => query.bind(v.as_deref()),
            Value::Int(v) => query.bind(*v),
            Value::MaybeInt(v) => query.bind(*v),
            Value::Small(v) => query.bind(*v),
            Value::Flag(v) => query.bind(*v),
        };
    }
    query
}

/// Runs the inserts: on PostgreSQL as one statement (one round trip) when they fit,
/// otherwise one chunked statement per table.
async fn run_inserts(
    conn: &mut AnyConnection,
    backend: Backend,
    inserts: &[Insert],
) -> Result<(), Error> {
    let inserts: Vec<&Insert> = inserts.iter().filter(|i| !i.rows.is_empty()).collect();
    let params: usize = inserts.iter().map(|i| i.rows.len() * i.columns).sum();
    if backend == Backend::Postgres && inserts.len() > 1 && params <= MAX_PARAMS {
        let mut sql = String::from("WITH ");
        let mut first = 1;
        for (n, insert) in inserts.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "w{n} AS ({} VALUES {}{})",
                insert.into,
                placeholders_from(first, insert.rows.len(), insert.columns),
                insert.tail
            ));
            first += insert.rows.len() * insert.columns;
        }
        sql.push_str(" SELECT 1");
        let values = inserts.iter().flat_map(|i| i.rows.iter().flatten());
        bind_all(sqlx::query::<Db>(AssertSqlSafe(sql)), values)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    for insert in inserts {
        for chunk in insert.rows.chunks(CHUNK) {
            let sql = format!(
                "{} VALUES {}{}",
                insert.into,
                placeholders(chunk.len(), insert.columns),
                insert.tail
            );
            bind_all(
                sqlx::query::<Db>(AssertSqlSafe(sql)),
                chunk.iter().flatten(),
            )
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Writes `events` and `commands`, their deliveries and their ordering keys on the unit
/// of work's connection.
pub(crate) async fn write(
    conn: &mut AnyConnection,
    backend: Backend,
    routing: Option<&dyn Routing>,
    events: &[Envelope],
    commands: &[Sent],
) -> Result<Written, Error> {
    let now = now_millis();
    let lease = routing.and_then(|r| r.fast_path_lease());
    let lease_token = lease.map(|_| uuid::Uuid::now_v7().simple().to_string());
    let leased_until = lease.map(|l| now + l.as_millis() as i64);
    let handlers_of = |e: &Envelope| routing.map(|r| r.handlers_for(&e.name)).unwrap_or(&[]);

    // Events, then commands, each with its ordering key (none for events).
    let messages: Vec<(&Envelope, Option<&str>)> = events
        .iter()
        .map(|e| (e, None))
        .chain(commands.iter().map(|c| (&c.envelope, c.key.as_deref())))
        .collect();
    let mut event_rows = Vec::with_capacity(messages.len());
    for (e, key) in &messages {
        let occurred_at = e
            .occurred_at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|err| Error::rejected(std::io::Error::other(err.to_string())))?;
        event_rows.push(vec![
            Value::Text(e.id.to_string()),
            Value::Text(e.name.clone()),
            Value::Text(e.aggregate_type.clone()),
            Value::Text(e.aggregate_id.clone()),
            Value::Text(occurred_at),
            Value::Text(e.payload.to_string()),
            Value::Text(e.correlation_id.to_string()),
            Value::MaybeText(e.causation_id.map(|c| c.to_string())),
            Value::Flag(!handlers_of(e).is_empty()),
            Value::Int(now),
            Value::MaybeText(key.map(str::to_owned)),
        ]);
    }

    // Event deliveries are reserved for this process's fast path (when it has one);
    // command deliveries always go to workers, which honour their ordering keys.
    let mut delivery_rows = Vec::new();
    let mut fast_path_rows = false;
    for (n, (e, key)) in messages.iter().enumerate() {
        let fast = n < events.len();
        for handler in handlers_of(e) {
            let leased = fast && lease.is_some();
            fast_path_rows |= fast;
            delivery_rows.push(vec![
                Value::Text(e.id.to_string()),
                Value::Text((*handler).to_owned()),
                Value::Text(PENDING.to_owned()),
                Value::Small(if leased { 1 } else { 0 }),
                Value::Int(now),
                Value::MaybeInt(if leased { leased_until } else { None }),
                Value::MaybeText(if leased { lease_token.clone() } else { None }),
                Value::Int(now),
                Value::MaybeText(key.map(str::to_owned)),
            ]);
        }
    }

    let mut keys: Vec<&str> = commands.iter().filter_map(|c| c.key.as_deref()).collect();
    keys.sort_unstable();
    keys.dedup();
    let key_rows = keys
        .iter()
        .map(|k| vec![Value::Text((*k).to_owned())])
        .collect();

    let inserts = [
        Insert {
            into: "INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, \
                   occurred_at, payload, correlation_id, causation_id, routed, created_at, \
                   ordering_key)",
            columns: 11,
            tail: "",
            rows: event_rows,
        },
        Insert {
            into: "INSERT INTO keel_deliveries (event_id, handler, status, attempts, \
                   next_attempt_at, leased_until, leased_by, updated_at, ordering_key)",
            columns: 9,
            tail: "",
            rows: delivery_rows,
        },
        Insert {
            into: "INSERT INTO keel_keys (key)",
            columns: 1,
            tail: " ON CONFLICT DO NOTHING",
            rows: key_rows,
        },
    ];
    run_inserts(conn, backend, &inserts).await?;

    // Rows a relay must pick up now: unrouted rows, commands, or deliveries nobody reserved.
    let unrouted = messages.iter().any(|(e, _)| handlers_of(e).is_empty());
    let left_for_relay = unrouted || !commands.is_empty() || (lease.is_none() && fast_path_rows);
    Ok(Written {
        lease_token: if fast_path_rows { lease_token } else { None },
        left_for_relay,
    })
}

/// Makes sure every ordering key has its row in `keel_keys` (the row workers lease).
pub async fn insert_keys<'k>(
    conn: &mut AnyConnection,
    keys: impl Iterator<Item = &'k str>,
) -> Result<(), Error> {
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    for chunk in keys.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO keel_keys (key) VALUES {} ON CONFLICT DO NOTHING",
            placeholders(chunk.len(), 1)
        );
        let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
        for key in chunk {
            query = query.bind(*key);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Marks the pending deliveries of `event_ids` to `handler` done; returns how many were
/// pending. The dispatcher uses it for handlers that wrote nothing through their context.
pub async fn mark_done(
    conn: &mut AnyConnection,
    event_ids: &[String],
    handler: &str,
) -> Result<usize, Error> {
    let mut done = 0;
    for chunk in event_ids.chunks(CHUNK) {
        let ids = (0..chunk.len())
            .map(|i| format!("${}", i + 5))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "UPDATE keel_deliveries SET status = $1, leased_until = NULL, leased_by = NULL, \
             updated_at = $2 WHERE handler = $3 AND status = $4 AND event_id IN ({ids})"
        );
        let mut query = sqlx::query::<Db>(AssertSqlSafe(sql))
            .bind(DONE)
            .bind(now_millis())
            .bind(handler)
            .bind(PENDING);
        for id in chunk {
            query = query.bind(id.as_str());
        }
        done += query.execute(&mut *conn).await?.rows_affected() as usize;
    }
    Ok(done)
}

/// Marks the deliveries of `event_ids` to `handler` done, in the handler's own unit of
/// work: the processed marker that makes a repeated delivery a no-op. All or nothing.
pub(crate) async fn mark_processed(
    conn: &mut AnyConnection,
    event_ids: &[String],
    handler: &'static str,
) -> Result<(), Error> {
    match mark_done(conn, event_ids, handler).await? {
        n if n == event_ids.len() => Ok(()),
        0 => Err(Error::AlreadyProcessed {
            event_id: event_ids.first().cloned().unwrap_or_default(),
            handler,
        }),
        _ => Err(Error::BatchPartlyProcessed { handler }),
    }
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(placeholders(2, 3), "($1,$2,$3),($4,$5,$6)");
        assert_eq!(placeholders(1, 1), "($1)");
    }
}
