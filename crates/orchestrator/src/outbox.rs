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
pub const NOTIFY_CHANNEL: &str = "keel_outbox";

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
}

/// What the outbox write decided for the fast path: the lease token of the deliveries
/// reserved for this process, if any.
pub(crate) struct Written {
    pub(crate) lease_token: Option<String>,
}

/// Rows per multi-row `INSERT` (well under both backends' bind-parameter limits).
const CHUNK: usize = 500;

fn placeholders(rows: usize, columns: usize) -> String {
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
            sql.push_str(&(row * columns + column + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// Writes `events` and their deliveries on the unit of work's connection.
pub(crate) async fn write(
    conn: &mut AnyConnection,
    backend: Backend,
    routing: Option<&dyn Routing>,
    events: &[Envelope],
) -> Result<Written, Error> {
    let now = now_millis();
    let lease = routing.and_then(|r| r.fast_path_lease());
    let lease_token = lease.map(|_| uuid::Uuid::now_v7().simple().to_string());
    let leased_until = lease.map(|l| now + l.as_millis() as i64);
    let handlers_of = |e: &Envelope| routing.map(|r| r.handlers_for(&e.name)).unwrap_or(&[]);

    for chunk in events.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at, \
             payload, correlation_id, causation_id, routed, created_at) VALUES {}",
            placeholders(chunk.len(), 10)
        );
        let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
        for e in chunk {
            let occurred_at = e
                .occurred_at
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|err| Error::rejected(std::io::Error::other(err.to_string())))?;
            query = query
                .bind(e.id.to_string())
                .bind(e.name.clone())
                .bind(e.aggregate_type.clone())
                .bind(e.aggregate_id.clone())
                .bind(occurred_at)
                .bind(e.payload.to_string())
                .bind(e.correlation_id.to_string())
                .bind(e.causation_id.map(|c| c.to_string()))
                .bind(!handlers_of(e).is_empty())
                .bind(now);
        }
        query.execute(&mut *conn).await?;
    }

    let deliveries: Vec<(&Envelope, &'static str)> = events
        .iter()
        .flat_map(|e| handlers_of(e).iter().map(move |h| (e, *h)))
        .collect();
    for chunk in deliveries.chunks(CHUNK) {
        let sql = format!(
            "INSERT INTO keel_deliveries (event_id, handler, status, attempts, next_attempt_at, \
             leased_until, leased_by, updated_at) VALUES {}",
            placeholders(chunk.len(), 8)
        );
        let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
        for (e, handler) in chunk {
            query = query
                .bind(e.id.to_string())
                .bind(*handler)
                .bind(PENDING)
                .bind(if lease.is_some() { 1_i32 } else { 0 })
                .bind(now)
                .bind(leased_until)
                .bind(lease_token.clone())
                .bind(now);
        }
        query.execute(&mut *conn).await?;
    }

    // Rows a relay must pick up now: unrouted events, or deliveries nobody reserved.
    let unrouted = events.iter().any(|e| handlers_of(e).is_empty());
    let for_relay = unrouted || (lease.is_none() && !deliveries.is_empty());
    if for_relay && backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Written {
        lease_token: if deliveries.is_empty() {
            None
        } else {
            lease_token
        },
    })
}

/// Marks the pending delivery of `event_id` to `handler` done; returns whether it was
/// pending. The dispatcher uses it for handlers that wrote nothing through their context.
pub async fn mark_done(
    conn: &mut AnyConnection,
    event_id: &str,
    handler: &str,
) -> Result<bool, Error> {
    let updated = sqlx::query(
        "UPDATE keel_deliveries SET status = $1, leased_until = NULL, leased_by = NULL, \
         updated_at = $2 WHERE event_id = $3 AND handler = $4 AND status = $5",
    )
    .bind(DONE)
    .bind(now_millis())
    .bind(event_id)
    .bind(handler)
    .bind(PENDING)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Marks the delivery of `event_id` to `handler` done, in the handler's own unit of work:
/// the processed marker that makes a repeated delivery a no-op.
pub(crate) async fn mark_processed(
    conn: &mut AnyConnection,
    event_id: &str,
    handler: &'static str,
) -> Result<(), Error> {
    if mark_done(conn, event_id, handler).await? {
        return Ok(());
    }
    Err(Error::AlreadyProcessed {
        event_id: event_id.to_owned(),
        handler,
    })
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
