//! The delivery side on PostgreSQL: claims, leases, outcomes, routing, purge, and the
//! relay's listener. Most operations are one statement, atomic on its own: one round trip
//! and no `BEGIN`/`COMMIT`.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{Envelope, EventId};
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row};
use tokio::sync::watch;
use uuid::Uuid;

use crate::outbox::{
    Claim, DEAD, Group, NO_HANDLER, NOTIFY_CHANNEL, Next, PENDING, no_handler_error,
};
use crate::unit_of_work::internal;
use crate::{Database, Error};

/// The event columns every claim returns, prefixed by the events table's alias `e`.
pub(super) const EVENT_COLUMNS: &str = "e.id, e.name, e.aggregate_type, e.aggregate_id, \
    e.occurred_at, e.payload, e.correlation_id, e.causation_id";

/// Turns a row holding [`EVENT_COLUMNS`] back into an envelope.
pub(super) fn envelope_from(row: &PgRow) -> Result<Envelope, String> {
    let get = |column: &str| format!("column {column}");
    let id: Option<Uuid> = row.try_get("id").map_err(|e| format!("{}: {e}", get("id")))?;
    let Some(id) = id else {
        return Err("event row not found".to_owned());
    };
    let text = |column: &str| -> Result<String, String> {
        row.try_get::<String, _>(column)
            .map_err(|e| format!("{}: {e}", get(column)))
    };
    Ok(Envelope {
        id: EventId::from_uuid(id),
        name: text("name")?,
        aggregate_type: text("aggregate_type")?,
        aggregate_id: text("aggregate_id")?,
        occurred_at: row
            .try_get("occurred_at")
            .map_err(|e| format!("{}: {e}", get("occurred_at")))?,
        payload: row
            .try_get("payload")
            .map_err(|e| format!("{}: {e}", get("payload")))?,
        correlation_id: row
            .try_get("correlation_id")
            .map_err(|e| format!("{}: {e}", get("correlation_id")))?,
        causation_id: row
            .try_get::<Option<Uuid>, _>("causation_id")
            .map_err(|e| format!("{}: {e}", get("causation_id")))?
            .map(EventId::from_uuid),
    })
}

fn claim_from(row: &PgRow, token: Uuid) -> Result<Claim, Error> {
    Ok(Claim {
        event: envelope_from(row).map(Arc::new),
        event_id: EventId::from_uuid(row.try_get("claimed_id")?),
        handler: row.try_get("claimed_handler")?,
        attempt: row.try_get::<i32, _>("claimed_attempts")?.max(1) as u32,
        token,
        claimed_at: std::time::Instant::now(),
    })
}

fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

/// One statement leases the rows and returns them joined with their events. The rows
/// locked are updated by their physical address (`ctid`, stable while locked), and the
/// lease leaves every indexed column alone, so PostgreSQL updates them in place (HOT).
pub(super) async fn claim(
    db: &Database<Postgres>,
    limit: u32,
    lease: Duration,
) -> Result<Vec<Claim>, Error> {
    let token = Uuid::now_v7();
    let sql = format!(
        "WITH c AS (
             SELECT ctid FROM keel_deliveries
             WHERE status = 'pending' AND next_attempt_at <= now() AND ordering_key IS NULL
               AND (leased_until IS NULL OR leased_until < now())
             ORDER BY next_attempt_at LIMIT $1
             FOR UPDATE SKIP LOCKED),
         u AS (
             UPDATE keel_deliveries d
             SET leased_until = now() + $2 * interval '1 millisecond', leased_by = $3,
                 attempts = d.attempts + 1
             WHERE d.ctid = ANY (ARRAY(SELECT ctid FROM c))
             RETURNING d.event_id AS claimed_id, d.handler AS claimed_handler,
                       d.attempts AS claimed_attempts)
         SELECT u.claimed_id, u.claimed_handler, u.claimed_attempts, {EVENT_COLUMNS}
         FROM u LEFT JOIN keel_events e ON e.id = u.claimed_id"
    );
    let mut conn = db.acquire().await?;
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(i64::from(limit))
        .bind(millis(lease))
        .bind(token)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|row| claim_from(row, token)).collect()
}

/// Keys with due commands and no live lease, skipping keys another worker is claiming
/// right now; then, per key, its head commands in send order.
pub(super) async fn claim_keyed(
    db: &Database<Postgres>,
    max_keys: u32,
    lease: Duration,
    batch_size: &(dyn Fn(&str) -> usize + Sync),
    max_batch: usize,
) -> Result<Vec<Group>, Error> {
    let lease_ms = millis(lease);
    let claim_sql = format!(
        "WITH u AS (
             UPDATE keel_deliveries
             SET leased_until = now() + $1 * interval '1 millisecond', leased_by = $2,
                 attempts = attempts + 1
             WHERE handler = $3 AND status = 'pending' AND event_id = ANY ($4)
             RETURNING event_id AS claimed_id, handler AS claimed_handler,
                       attempts AS claimed_attempts)
         SELECT u.claimed_id, u.claimed_handler, u.claimed_attempts, {EVENT_COLUMNS}
         FROM u LEFT JOIN keel_events e ON e.id = u.claimed_id ORDER BY u.claimed_id"
    );
    let claim_sql = &claim_sql;
    db.clone()
        .unit_of_work_with(&internal("keel_claim_keyed"), async |tx| {
            let keys: Vec<String> = sqlx::query_scalar(
                "WITH due AS (
                     SELECT DISTINCT ordering_key FROM (
                         SELECT ordering_key FROM keel_deliveries
                         WHERE status = 'pending' AND ordering_key IS NOT NULL
                           AND next_attempt_at <= now()
                         ORDER BY next_attempt_at LIMIT 1000) d)
                 SELECT k.key FROM keel_keys k JOIN due ON due.ordering_key = k.key
                 WHERE k.leased_until IS NULL OR k.leased_until < now()
                 LIMIT $1 FOR UPDATE OF k SKIP LOCKED",
            )
            .bind(i64::from(max_keys))
            .fetch_all(tx.conn())
            .await?;
            let mut groups = Vec::with_capacity(keys.len());
            for key in keys {
                let heads: Vec<(Uuid, String, bool)> = sqlx::query_as(
                    "SELECT event_id, handler,
                            next_attempt_at <= now()
                            AND (leased_until IS NULL OR leased_until < now()) AS free
                     FROM keel_deliveries
                     WHERE ordering_key = $1 AND status = 'pending'
                     ORDER BY event_id LIMIT $2",
                )
                .bind(key.as_str())
                .bind(max_batch as i64)
                .fetch_all(tx.conn())
                .await?;
                // Strict order: a head that waits for its retry holds its key.
                let Some((_, handler, true)) = heads.first() else {
                    continue;
                };
                let ids: Vec<Uuid> = heads
                    .iter()
                    .take(batch_size(handler))
                    .take_while(|(_, h, free)| h == handler && *free)
                    .map(|(id, _, _)| *id)
                    .collect();
                let token = Uuid::now_v7();
                sqlx::query(
                    "UPDATE keel_keys SET leased_until = now() + $1 * interval '1 millisecond',
                     leased_by = $2 WHERE key = $3",
                )
                .bind(lease_ms)
                .bind(token)
                .bind(key.as_str())
                .execute(tx.conn())
                .await?;
                let rows = sqlx::query(AssertSqlSafe(claim_sql.clone()))
                    .bind(lease_ms)
                    .bind(token)
                    .bind(handler.as_str())
                    .bind(ids)
                    .fetch_all(tx.conn())
                    .await?;
                let claims = rows
                    .iter()
                    .map(|row| claim_from(row, token))
                    .collect::<Result<Vec<_>, _>>()?;
                groups.push(Group {
                    claims,
                    key: Some(key),
                });
            }
            Ok(groups)
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Extends the leases still held by the claims' token, and their key's, in one statement.
pub(super) async fn renew(
    db: &Database<Postgres>,
    claims: &[Claim],
    key: Option<&str>,
    lease: Duration,
) -> Result<Vec<bool>, Error> {
    let Some(token) = claims.first().map(|c| c.token) else {
        return Ok(Vec::new());
    };
    let ids: Vec<Uuid> = claims.iter().map(|c| *c.event_id.as_uuid()).collect();
    let handlers: Vec<&str> = claims.iter().map(|c| c.handler.as_str()).collect();
    let mut conn = db.acquire().await?;
    let renewed: Vec<(Uuid, String)> = sqlx::query_as(
        "WITH k AS (
             UPDATE keel_keys SET leased_until = now() + $1 * interval '1 millisecond'
             WHERE key = $5 AND leased_by = $2)
         UPDATE keel_deliveries d SET leased_until = now() + $1 * interval '1 millisecond'
         FROM UNNEST($3::uuid[], $4::text[]) AS t (i, h)
         WHERE d.event_id = t.i AND d.handler = t.h AND d.leased_by = $2
           AND d.status = 'pending'
         RETURNING d.event_id, d.handler",
    )
    .bind(millis(lease))
    .bind(token)
    .bind(ids)
    .bind(handlers)
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    Ok(claims
        .iter()
        .map(|c| {
            renewed
                .iter()
                .any(|(i, h)| i == c.event_id.as_uuid() && *h == c.handler)
        })
        .collect())
}

pub(super) async fn release_key(
    db: &Database<Postgres>,
    key: &str,
    token: Uuid,
) -> Result<(), Error> {
    let mut conn = db.acquire().await?;
    sqlx::query(
        "UPDATE keel_keys SET leased_until = NULL, leased_by = NULL
         WHERE key = $1 AND leased_by = $2",
    )
    .bind(key)
    .bind(token)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The new state of the delivery and its error history in one statement: the error is
/// recorded only if the delivery was still this claim's.
pub(super) async fn record_failure(
    db: &Database<Postgres>,
    claim: &Claim,
    error: &str,
    next: Next,
) -> Result<(), Error> {
    let (status, delay) = match next {
        Next::RetryIn(delay) => (PENDING, delay),
        Next::Dead => (DEAD, Duration::ZERO),
    };
    let mut conn = db.acquire().await?;
    sqlx::query(
        "WITH u AS (
             UPDATE keel_deliveries
             SET status = $1, next_attempt_at = now() + $2 * interval '1 millisecond',
                 leased_until = NULL, leased_by = NULL, last_error = $3, updated_at = now()
             WHERE event_id = $4 AND handler = $5 AND status = 'pending' AND leased_by = $6
             RETURNING event_id, handler)
         INSERT INTO keel_delivery_errors (event_id, handler, attempt, error)
         SELECT event_id, handler, $7, $3 FROM u ON CONFLICT DO NOTHING",
    )
    .bind(status)
    .bind(millis(delay))
    .bind(error)
    .bind(claim.event_id.as_uuid())
    .bind(claim.handler.as_str())
    .bind(claim.token)
    .bind(claim.attempt as i32)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Creates the delivery rows of events written without routing. An event no handler is
/// registered for goes to the dead letter under [`NO_HANDLER`].
pub(super) async fn route_unrouted(
    db: &Database<Postgres>,
    limit: u32,
    handlers_for: &(dyn Fn(&str) -> Vec<&'static str> + Sync),
) -> Result<usize, Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_route"), async |tx| {
            let events: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
                "WITH c AS (SELECT id FROM keel_events WHERE NOT routed
                            ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                 UPDATE keel_events e SET routed = TRUE FROM c WHERE e.id = c.id
                 RETURNING e.id, e.name, e.ordering_key",
            )
            .bind(i64::from(limit))
            .fetch_all(tx.conn())
            .await?;
            if events.is_empty() {
                return Ok(0);
            }
            let (mut ids, mut handlers, mut statuses, mut errors, mut keys) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (id, name, key) in &events {
                let found = handlers_for(name);
                if found.is_empty() {
                    ids.push(*id);
                    handlers.push(NO_HANDLER);
                    statuses.push(DEAD);
                    errors.push(Some(no_handler_error(name)));
                    keys.push(key.as_deref());
                }
                for handler in found {
                    ids.push(*id);
                    handlers.push(handler);
                    statuses.push(PENDING);
                    errors.push(None);
                    keys.push(key.as_deref());
                }
            }
            sqlx::query(
                "WITH d AS (
                     INSERT INTO keel_deliveries (event_id, handler, status, last_error, ordering_key)
                     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
                     ON CONFLICT DO NOTHING),
                 x AS (
                     INSERT INTO keel_delivery_errors (event_id, handler, attempt, error)
                     SELECT i, h, 0, m FROM UNNEST($1::uuid[], $2::text[], $4::text[]) AS t (i, h, m)
                     WHERE m IS NOT NULL ON CONFLICT DO NOTHING)
                 INSERT INTO keel_keys (key)
                 SELECT DISTINCT k FROM UNNEST($5::text[]) AS t (k) WHERE k IS NOT NULL
                 ON CONFLICT DO NOTHING",
            )
            .bind(&ids)
            .bind(&handlers)
            .bind(&statuses)
            .bind(&errors)
            .bind(&keys)
            .execute(tx.conn())
            .await?;
            Ok(events.len())
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Checked in one statement, so that routing between two checks cannot hide work.
pub(super) async fn any_unfinished(db: &Database<Postgres>) -> Result<bool, Error> {
    let mut conn = db.acquire().await?;
    let unfinished: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM keel_deliveries WHERE status = 'pending')
             OR EXISTS (SELECT 1 FROM keel_events WHERE NOT routed)",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(unfinished)
}

/// One statement, driven by the `done` index and by the keys it deletes. Its parts see
/// one snapshot, so the events' check ignores the deliveries deleted alongside.
pub(super) async fn purge(
    db: &Database<Postgres>,
    older_than: Duration,
    limit: u32,
) -> Result<u64, Error> {
    let mut conn = db.acquire().await?;
    let removed: i64 = sqlx::query_scalar(
        "WITH d AS (
             DELETE FROM keel_deliveries WHERE (event_id, handler) IN
                 (SELECT event_id, handler FROM keel_deliveries
                  WHERE status = 'done' AND updated_at < now() - $1 * interval '1 millisecond'
                  LIMIT $2)
             RETURNING event_id, handler),
         x AS (
             DELETE FROM keel_delivery_errors r USING d
             WHERE r.event_id = d.event_id AND r.handler = d.handler RETURNING 1),
         v AS (
             DELETE FROM keel_events e WHERE e.id IN (SELECT event_id FROM d)
               AND NOT EXISTS (SELECT 1 FROM keel_deliveries k WHERE k.event_id = e.id
                   AND (k.event_id, k.handler) NOT IN (SELECT event_id, handler FROM d))
             RETURNING 1)
         SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM x) + (SELECT count(*) FROM v)",
    )
    .bind(millis(older_than))
    .bind(i64::from(limit))
    .fetch_one(&mut *conn)
    .await?;
    Ok(removed.max(0) as u64)
}

/// Listens on [`NOTIFY_CHANNEL`] through the pool's own connect options.
pub(super) async fn listen(
    db: &Database<Postgres>,
    wake: &(dyn Fn() + Sync),
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(db.pool()).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = stop.changed() => return,
            listener = connected => match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(%error, "relay listener cannot connect; polling meanwhile");
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        // Anything committed while the listener was down is found by the next poll.
        wake();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                notification = listener.recv() => match notification {
                    Ok(_) => wake(),
                    Err(error) => {
                        tracing::debug!(%error, "relay listener lost its connection");
                        break;
                    }
                },
            }
        }
    }
}
