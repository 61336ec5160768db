//! The delivery side on PostgreSQL after the claims: outcomes, routing, purge, and the
//! relay's listener. Most operations are one statement, atomic on its own: one round trip
//! and no `BEGIN`/`COMMIT`.

use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;
use uuid::Uuid;

use crate::notify::RELAY_APPLICATION_NAME;
use crate::options::internal;
use crate::outbox::{Claim, DEAD, NO_HANDLER, NOTIFY_CHANNEL, Next, PENDING, no_handler_error};
use crate::store::millis;
use crate::{Database, Error};

/// The new state of the delivery and its error history in one statement: the error is
/// recorded only if the delivery was still this claim's, and never dropped (an attempt
/// number met twice keeps both errors).
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
             SET status = $1, next_attempt_at = clock_timestamp() + $2 * interval '1 millisecond',
                 leased_until = NULL, leased_by = NULL, last_error = $3, updated_at = now()
             WHERE event_id = $4 AND handler = $5 AND status = 'pending' AND leased_by = $6
             RETURNING event_id, handler)
         INSERT INTO keel_delivery_errors (event_id, handler, attempt, error)
         SELECT event_id, handler, $7, $3 FROM u
         ON CONFLICT (event_id, handler, attempt)
         DO UPDATE SET error = keel_delivery_errors.error || E'\n' || EXCLUDED.error",
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
            let events: Vec<(Uuid, String, Option<String>, Option<i64>)> = sqlx::query_as(
                "WITH c AS (SELECT id FROM keel_events WHERE NOT routed
                            ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                 UPDATE keel_events e SET routed = TRUE FROM c WHERE e.id = c.id
                 RETURNING e.id, e.name, e.ordering_key, e.key_seq",
            )
            .bind(i64::from(limit))
            .fetch_all(tx.conn())
            .await?;
            if events.is_empty() {
                return Ok(0);
            }
            let (mut ids, mut handlers, mut statuses, mut errors, mut keys, mut seqs) = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for (id, name, key, seq) in &events {
                let found = handlers_for(name);
                if found.is_empty() {
                    ids.push(*id);
                    handlers.push(NO_HANDLER);
                    statuses.push(DEAD);
                    errors.push(Some(no_handler_error(name)));
                    keys.push(key.as_deref());
                    seqs.push(*seq);
                }
                for handler in found {
                    ids.push(*id);
                    handlers.push(handler);
                    statuses.push(PENDING);
                    errors.push(None);
                    keys.push(key.as_deref());
                    seqs.push(*seq);
                }
            }
            // The outbox write made the key rows; one removed meanwhile comes back, numbering
            // on from its commands.
            sqlx::query(
                "WITH d AS (
                     INSERT INTO keel_deliveries (event_id, handler, status, last_error,
                         ordering_key, key_seq)
                     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[],
                         $5::text[], $6::bigint[])
                     ON CONFLICT DO NOTHING),
                 x AS (
                     INSERT INTO keel_delivery_errors (event_id, handler, attempt, error)
                     SELECT i, h, 0, m FROM UNNEST($1::uuid[], $2::text[], $4::text[])
                         AS t (i, h, m)
                     WHERE m IS NOT NULL ON CONFLICT DO NOTHING)
                 INSERT INTO keel_keys (key, next_seq)
                 SELECT k, max(COALESCE(s, 0)) FROM UNNEST($5::text[], $6::bigint[]) AS t (k, s)
                 WHERE k IS NOT NULL GROUP BY k
                 ON CONFLICT DO NOTHING",
            )
            .bind(&ids)
            .bind(&handlers)
            .bind(&statuses)
            .bind(&errors)
            .bind(&keys)
            .bind(&seqs)
            .execute(tx.conn())
            .await?;
            Ok(events.len())
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Checked in one statement, so that routing between two checks cannot hide work.
pub(super) async fn any_unfinished(
    db: &Database<Postgres>,
    handlers: &[&str],
) -> Result<bool, Error> {
    let mut conn = db.acquire().await?;
    let unfinished: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM keel_deliveries
                        WHERE status = 'pending' AND handler = ANY ($1))
             OR EXISTS (SELECT 1 FROM keel_events WHERE NOT routed)",
    )
    .bind(handlers)
    .fetch_one(&mut *conn)
    .await?;
    Ok(unfinished)
}

/// One statement, driven by the done log's time index, the `dead` index and the keys it
/// deletes. Its parts see one snapshot, so the events' checks ignore the rows deleted
/// alongside.
pub(super) async fn purge(
    db: &Database<Postgres>,
    done_older_than: Option<Duration>,
    dead_older_than: Option<Duration>,
    limit: u32,
) -> Result<u64, Error> {
    let mut conn = db.acquire().await?;
    let removed: i64 = sqlx::query_scalar(
        "WITH f AS (
             DELETE FROM keel_done WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM keel_done
                 WHERE $1::bigint IS NOT NULL AND done_at < now() - $1 * interval '1 millisecond'
                 LIMIT $2))
             RETURNING event_id, handler),
         d AS (
             DELETE FROM keel_deliveries WHERE (event_id, handler) IN
                 (SELECT event_id, handler FROM keel_deliveries
                  WHERE $3::bigint IS NOT NULL AND status = 'dead'
                    AND updated_at < now() - $3 * interval '1 millisecond'
                  LIMIT $2)
             RETURNING event_id, handler),
         g AS (SELECT event_id, handler FROM f UNION ALL SELECT event_id, handler FROM d),
         x AS (
             DELETE FROM keel_delivery_errors r USING g
             WHERE r.event_id = g.event_id AND r.handler = g.handler RETURNING 1),
         v AS (
             DELETE FROM keel_events e WHERE e.id IN (SELECT event_id FROM g)
               AND NOT EXISTS (SELECT 1 FROM keel_deliveries k WHERE k.event_id = e.id
                   AND (k.event_id, k.handler) NOT IN (SELECT event_id, handler FROM d))
               AND NOT EXISTS (SELECT 1 FROM keel_done k WHERE k.event_id = e.id
                   AND (k.event_id, k.handler) NOT IN (SELECT event_id, handler FROM f))
             RETURNING 1),
         k AS (
             DELETE FROM keel_keys k WHERE k.key IN
                 (SELECT key FROM keel_keys i
                  WHERE (i.leased_until IS NULL OR i.leased_until < now())
                    AND i.last_used < now() - interval '1 hour'
                    AND NOT EXISTS (SELECT 1 FROM keel_deliveries p
                                    WHERE p.ordering_key = i.key AND p.status = 'pending')
                    AND NOT EXISTS (SELECT 1 FROM keel_events u
                                    WHERE NOT u.routed AND u.ordering_key = i.key)
                  LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING 1)
         SELECT (SELECT count(*) FROM g) + (SELECT count(*) FROM x) + (SELECT count(*) FROM v)
              + (SELECT count(*) FROM k)",
    )
    .bind(done_older_than.map(millis))
    .bind(i64::from(limit))
    .bind(dead_older_than.map(millis))
    .fetch_one(&mut *conn)
    .await?;
    // A pending command without its key row (left by an older build, or removed by hand)
    // would never be claimed, since keyed claims start from key rows: give it one back,
    // numbering on from its commands.
    sqlx::query(
        "INSERT INTO keel_keys (key, next_seq)
         SELECT d.ordering_key, max(COALESCE(d.key_seq, 0)) FROM keel_deliveries d
         WHERE d.status = 'pending' AND d.ordering_key IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM keel_keys k WHERE k.key = d.ordering_key)
         GROUP BY d.ordering_key
         ON CONFLICT DO NOTHING",
    )
    .execute(&mut *conn)
    .await?;
    Ok(removed.max(0) as u64)
}

/// Listens on [`NOTIFY_CHANNEL`] through the pool's own connect options, on a connection
/// of its own: a listener holds its connection for as long as the relay runs, so it must
/// not take one of the pool's (a pool of one would starve).
pub(super) async fn listen(
    db: &Database<Postgres>,
    wake: &(dyn Fn() + Sync),
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let connected = async {
            let options = (*db.pool().connect_options()).clone();
            let name = match options.get_application_name() {
                Some(name) => format!("{RELAY_APPLICATION_NAME} {name}"),
                None => RELAY_APPLICATION_NAME.to_owned(),
            };
            let own = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.application_name(&name))
                .await?;
            let mut listener = PgListener::connect_with(&own).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            let id: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut listener)
                .await?;
            Ok::<_, sqlx::Error>((listener, id))
        };
        let (mut listener, id) = tokio::select! {
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
        let _own = db.own_listener(id);
        // Anything committed while the listener was down is found by the next poll.
        wake();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = db.notifier().local() => wake(),
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

/// Whether a relay listens on a connection of this database other than `own`: relays'
/// listening connections are named [`RELAY_APPLICATION_NAME`]`…` (a name every role may
/// read in `pg_stat_activity`).
pub(super) async fn others_listen(conn: &mut sqlx::PgConnection, own: &[i32]) -> bool {
    let others = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                         WHERE datname = current_database()
                           AND starts_with(application_name, $1)
                           AND pid <> ALL($2))",
    )
    .bind(RELAY_APPLICATION_NAME)
    .bind(own)
    .fetch_one(conn)
    .await;
    others.unwrap_or_else(|error| {
        tracing::debug!(%error, "cannot tell whether other relays listen; notifying them");
        true
    })
}

/// Records the subscriptions of a relay (first seen now, or seen again now), and warns
/// about a handler name another process has subscribed to another message: the two would
/// take each other's deliveries.
pub(super) async fn subscribe(
    db: &Database<Postgres>,
    subscriptions: &[(&str, &str)],
) -> Result<(), Error> {
    let (messages, handlers): (Vec<&str>, Vec<&str>) = subscriptions.iter().copied().unzip();
    let mut conn = db.acquire().await?;
    let clashes: Vec<(String, String, String)> = sqlx::query_as(
        "WITH u AS (
             INSERT INTO keel_subscriptions (message, handler)
             SELECT * FROM UNNEST($1::text[], $2::text[])
             ON CONFLICT (message, handler) DO UPDATE SET last_seen = now())
         SELECT s.handler, s.message, t.m FROM keel_subscriptions s
         JOIN UNNEST($1::text[], $2::text[]) AS t (m, h) ON s.handler = t.h AND s.message <> t.m",
    )
    .bind(&messages)
    .bind(&handlers)
    .fetch_all(&mut *conn)
    .await?;
    crate::store::warn_clashes(&clashes);
    Ok(())
}

/// In one transaction: the deliveries that exist are locked first, so that a handler's unit
/// of work marking one done commits before the done log is read (see `inbox.rs`).
pub(super) async fn backfill(
    db: &Database<Postgres>,
    message: &str,
    handler: &str,
    since: time::OffsetDateTime,
    again: bool,
) -> Result<u64, Error> {
    let created: i64 = db
        .clone()
        .unit_of_work_with(&internal("keel_backfill"), async |tx| {
            sqlx::query(
                "SELECT 1 FROM keel_deliveries d JOIN keel_events e ON e.id = d.event_id
                 WHERE d.handler = $2 AND e.name = $1 AND e.created_at >= $3
                 FOR UPDATE OF d",
            )
            .bind(message)
            .bind(handler)
            .bind(since)
            .execute(tx.conn())
            .await?;
            let created: i64 = sqlx::query_scalar(
                "WITH b AS (
                     INSERT INTO keel_deliveries (event_id, handler, ordering_key, key_seq)
                     SELECT id, $2, ordering_key, key_seq FROM keel_events e
                     WHERE name = $1 AND routed AND created_at >= $3
                       AND ($4 OR NOT EXISTS (SELECT 1 FROM keel_done d
                                              WHERE d.event_id = e.id AND d.handler = $2))
                     ON CONFLICT DO NOTHING RETURNING 1)
                 SELECT count(*) FROM b",
            )
            .bind(message)
            .bind(handler)
            .bind(since)
            .bind(again)
            .fetch_one(tx.conn())
            .await?;
            Ok(created)
        })
        .await?
        .into_value();
    Ok(created.max(0) as u64)
}
