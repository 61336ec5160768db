//! The delivery side on SQLite after the claims: outcomes, routing, purge. Each operation
//! is a short unit of work (it holds the write lock for its statements only), retried when
//! another process holds the lock.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_domain::EventId;
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};

use super::{CHUNK, now, now_ms};
use crate::options::internal;
use crate::outbox::{Claim, DEAD, NO_HANDLER, Next, PENDING, no_handler_error};
use crate::store::Store;
use crate::store::millis;
use crate::{Database, Error};

pub(super) async fn mark_done_many(
    db: &Database<Sqlite>,
    by_handler: &BTreeMap<&str, Vec<EventId>>,
) -> Result<(), Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_mark_done"), async |tx| {
            for (handler, event_ids) in by_handler {
                Sqlite::mark_done(tx.conn(), event_ids, handler).await?;
            }
            Ok(())
        })
        .await
        .map(|receipt| receipt.into_value())
}

pub(super) async fn record_failure(
    db: &Database<Sqlite>,
    claim: &Claim,
    error: &str,
    next: Next,
) -> Result<(), Error> {
    let (status, delay) = match next {
        Next::RetryIn(delay) => (PENDING, delay),
        Next::Dead => (DEAD, Duration::ZERO),
    };
    db.clone()
        .unit_of_work_with(&internal("keel_record_failure"), async |tx| {
            let now = now(tx.conn()).await?;
            let updated = sqlx::query(
                "UPDATE keel_deliveries SET status = $1, next_attempt_at = $2, leased_until = NULL,
                 leased_by = NULL, last_error = $3, updated_at = $4
                 WHERE event_id = $5 AND handler = $6 AND status = 'pending' AND leased_by = $7",
            )
            .bind(status)
            .bind(now + millis(delay))
            .bind(error)
            .bind(now)
            .bind(claim.event_id.to_string())
            .bind(claim.handler.as_str())
            .bind(claim.token.to_string())
            .execute(tx.conn())
            .await?
            .rows_affected();
            if updated == 1 {
                insert_error(
                    tx.conn(),
                    &claim.event_id.to_string(),
                    &claim.handler,
                    claim.attempt,
                    error,
                    Some(now),
                )
                .await?;
            }
            Ok(())
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Records a failed attempt, its `failed_at` the reading of the clock its retry's due time
/// was computed from, when there is one (the clock read a statement later could be a
/// millisecond past it).
async fn insert_error(
    conn: &mut SqliteConnection,
    event_id: &str,
    handler: &str,
    attempt: u32,
    error: &str,
    failed_at: Option<i64>,
) -> Result<(), Error> {
    sqlx::query(concat!(
        "INSERT INTO keel_delivery_errors (event_id, handler, attempt, error, failed_at)
         VALUES ($1, $2, $3, $4, COALESCE($5, ",
        now_ms!(),
        ")) ON CONFLICT (event_id, handler, attempt)
         DO UPDATE SET error = keel_delivery_errors.error || char(10) || excluded.error"
    ))
    .bind(event_id)
    .bind(handler)
    .bind(attempt as i32)
    .bind(error)
    .bind(failed_at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_delivery(
    conn: &mut SqliteConnection,
    event_id: &str,
    handler: &str,
    status: &str,
    error: Option<&str>,
    key: Option<&str>,
    seq: Option<i64>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO keel_deliveries (event_id, handler, status, last_error, ordering_key, key_seq)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(handler)
    .bind(status)
    .bind(error)
    .bind(key)
    .bind(seq)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn route_unrouted(
    db: &Database<Sqlite>,
    limit: u32,
    handlers_for: &(dyn Fn(&str) -> Vec<&'static str> + Sync),
) -> Result<usize, Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_route"), async |tx| {
            let events: Vec<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(
                "UPDATE keel_events SET routed = TRUE WHERE id IN
                     (SELECT id FROM keel_events WHERE NOT routed ORDER BY created_at LIMIT $1)
                 RETURNING id, name, ordering_key, key_seq",
            )
            .bind(i64::from(limit))
            .fetch_all(tx.conn())
            .await?;
            // The outbox write made the key rows; one removed meanwhile comes back,
            // numbering on from its commands.
            for (id, name, key, seq) in &events {
                if let Some(key) = key {
                    sqlx::query(concat!(
                        "INSERT INTO keel_keys (key, next_seq, last_used) VALUES ($1, $2, ",
                        now_ms!(),
                        ") ON CONFLICT DO NOTHING"
                    ))
                    .bind(key.as_str())
                    .bind(seq.unwrap_or(0))
                    .execute(tx.conn())
                    .await?;
                }
                let key = key.as_deref();
                let handlers = handlers_for(name);
                if handlers.is_empty() {
                    let error = no_handler_error(name);
                    insert_delivery(tx.conn(), id, NO_HANDLER, DEAD, Some(&error), None, None)
                        .await?;
                    insert_error(tx.conn(), id, NO_HANDLER, 0, &error, None).await?;
                }
                for handler in handlers {
                    insert_delivery(tx.conn(), id, handler, PENDING, None, key, *seq).await?;
                }
            }
            Ok(events.len())
        })
        .await
        .map(|receipt| receipt.into_value())
}

pub(super) async fn any_unfinished(
    db: &Database<Sqlite>,
    handlers: &[&str],
) -> Result<bool, Error> {
    let handlers = serde_json::to_string(handlers).expect("names serialize");
    let mut conn = db.acquire().await?;
    let unfinished: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM keel_deliveries
                        WHERE status = 'pending' AND handler IN (SELECT value FROM json_each($1)))
             OR EXISTS (SELECT 1 FROM keel_events WHERE NOT routed)",
    )
    .bind(handlers)
    .fetch_one(&mut *conn)
    .await?;
    Ok(unfinished)
}

pub(super) async fn purge(
    db: &Database<Sqlite>,
    done_older_than: Option<Duration>,
    dead_older_than: Option<Duration>,
    limit: u32,
) -> Result<u64, Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_purge"), async |tx| {
            let mut pairs: Vec<(String, String)> = sqlx::query_as(concat!(
                "DELETE FROM keel_done WHERE (event_id, handler) IN
                 (SELECT event_id, handler FROM keel_done WHERE $1 IS NOT NULL AND done_at < ",
                now_ms!(),
                " - $1 LIMIT $2)
                 RETURNING event_id, handler"
            ))
            .bind(done_older_than.map(millis))
            .bind(i64::from(limit))
            .fetch_all(tx.conn())
            .await?;
            pairs.extend(
                sqlx::query_as::<_, (String, String)>(concat!(
                    "DELETE FROM keel_deliveries WHERE (event_id, handler) IN
                     (SELECT event_id, handler FROM keel_deliveries
                      WHERE $1 IS NOT NULL AND status = 'dead' AND updated_at < ",
                    now_ms!(),
                    " - $1 LIMIT $2)
                     RETURNING event_id, handler"
                ))
                .bind(dead_older_than.map(millis))
                .bind(i64::from(limit))
                .fetch_all(tx.conn())
                .await?,
            );
            let mut removed = pairs.len() as u64;
            for chunk in pairs.chunks(CHUNK) {
                let mut query = QueryBuilder::<Sqlite>::new(
                    "DELETE FROM keel_delivery_errors WHERE (event_id, handler) IN (VALUES ",
                );
                let mut list = query.separated(", ");
                for (event_id, handler) in chunk {
                    list.push("(")
                        .push_bind_unseparated(event_id.as_str())
                        .push_unseparated(", ")
                        .push_bind_unseparated(handler.as_str())
                        .push_unseparated(")");
                }
                query.push(")");
                removed += query.build().execute(tx.conn()).await?.rows_affected();
            }
            let mut ids: Vec<&str> = pairs.iter().map(|(e, _)| e.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            for chunk in ids.chunks(CHUNK) {
                let mut query =
                    QueryBuilder::<Sqlite>::new("DELETE FROM keel_events WHERE id IN (");
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                query.push(
                    ") AND NOT EXISTS \
                     (SELECT 1 FROM keel_deliveries d WHERE d.event_id = keel_events.id) \
                     AND NOT EXISTS (SELECT 1 FROM keel_done d WHERE d.event_id = keel_events.id)",
                );
                removed += query.build().execute(tx.conn()).await?.rows_affected();
            }
            // Ordering keys idle for an hour with nothing pending; then key rows back for
            // pending commands that lack one (keyed claims start from key rows).
            removed += sqlx::query(concat!(
                "DELETE FROM keel_keys WHERE key IN
                 (SELECT key FROM keel_keys
                  WHERE (leased_until IS NULL OR leased_until < ",
                now_ms!(),
                ") AND last_used < ",
                now_ms!(),
                " - 3600000
                    AND NOT EXISTS (SELECT 1 FROM keel_deliveries p
                                    WHERE p.ordering_key = keel_keys.key AND p.status = 'pending')
                    AND NOT EXISTS (SELECT 1 FROM keel_events u
                                    WHERE NOT u.routed AND u.ordering_key = keel_keys.key)
                  LIMIT $1)"
            ))
            .bind(i64::from(limit))
            .execute(tx.conn())
            .await?
            .rows_affected();
            sqlx::query(concat!(
                "INSERT INTO keel_keys (key, next_seq, last_used)
                 SELECT d.ordering_key, max(COALESCE(d.key_seq, 0)), ",
                now_ms!(),
                " FROM keel_deliveries d
                 WHERE d.status = 'pending' AND d.ordering_key IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM keel_keys k WHERE k.key = d.ordering_key)
                 GROUP BY d.ordering_key
                 ON CONFLICT DO NOTHING"
            ))
            .execute(tx.conn())
            .await?;
            Ok(removed)
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Records the subscriptions of a relay (first seen now, or seen again now), and warns
/// about a handler name another process has subscribed to another message.
pub(super) async fn subscribe(
    db: &Database<Sqlite>,
    subscriptions: &[(&str, &str)],
) -> Result<(), Error> {
    let pairs = serde_json::to_string(subscriptions).expect("names serialize");
    let pairs = pairs.as_str();
    let clashes = db
        .clone()
        .unit_of_work_with(&internal("keel_subscribe"), async |tx| {
            sqlx::query(concat!(
                "INSERT INTO keel_subscriptions (message, handler)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
                 FROM json_each($1) WHERE true
                 ON CONFLICT (message, handler) DO UPDATE SET last_seen = ",
                now_ms!()
            ))
            .bind(pairs)
            .execute(tx.conn())
            .await?;
            let clashes: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT s.handler, s.message, json_extract(t.value, '$[0]')
                 FROM keel_subscriptions s JOIN json_each($1) t
                   ON s.handler = json_extract(t.value, '$[1]')
                  AND s.message <> json_extract(t.value, '$[0]')",
            )
            .bind(pairs)
            .fetch_all(tx.conn())
            .await?;
            Ok(clashes)
        })
        .await?
        .into_value();
    crate::store::warn_clashes(&clashes);
    Ok(())
}

pub(super) async fn backfill(
    db: &Database<Sqlite>,
    message: &str,
    handler: &str,
    since: time::OffsetDateTime,
    again: bool,
) -> Result<u64, Error> {
    let since_ms = super::to_ms(since);
    let mut conn = db.acquire().await?;
    let created = sqlx::query(
        "INSERT INTO keel_deliveries (event_id, handler, ordering_key, key_seq)
         SELECT id, $2, ordering_key, key_seq FROM keel_events e
         WHERE name = $1 AND routed AND created_at >= $3
           AND ($4 OR NOT EXISTS (SELECT 1 FROM keel_done d
                                  WHERE d.event_id = e.id AND d.handler = $2))
         ON CONFLICT DO NOTHING",
    )
    .bind(message)
    .bind(handler)
    .bind(since_ms)
    .bind(again)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(created)
}
