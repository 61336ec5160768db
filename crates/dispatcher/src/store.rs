//! The read side of the outbox: claiming deliveries, recording outcomes, routing events
//! that were written without their handlers, purging. All of it in short units of work,
//! never across a handler call.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{Envelope, EventId};
use keel_orchestrator::outbox::{self, DEAD, PENDING, now_millis};
use keel_orchestrator::{Backend, Database, Db, Error, RetryPolicy, UnitOfWork};
use sqlx::{AssertSqlSafe, Row};

use crate::Registry;

/// The handler name of the dead-letter entry of an event no handler is registered for.
pub const NO_HANDLER: &str = "keel::no_handler";

/// Deliveries claimed together: one delivery, or a batch of commands of one ordering
/// key (whose key lease, `key`, is released when the group ends).
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) claims: Vec<Claim>,
    pub(crate) key: Option<String>,
}

impl Group {
    pub(crate) fn one(claim: Claim) -> Self {
        Group {
            claims: vec![claim],
            key: None,
        }
    }
}

/// One delivery claimed by this process.
#[derive(Debug)]
pub(crate) struct Claim {
    pub(crate) event: Result<Arc<Envelope>, String>,
    pub(crate) event_id: String,
    pub(crate) handler: String,
    pub(crate) attempt: u32,
    pub(crate) token: String,
    /// When the lease was taken, to renew it if the delivery waited long for a slot.
    pub(crate) claimed_at: std::time::Instant,
}

fn internal(name: &'static str) -> UnitOfWork {
    UnitOfWork::named(name).retry(RetryPolicy::default().max_attempts(8))
}

fn in_list(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

const EVENT_COLUMNS: &str = "id, name, aggregate_type, aggregate_id, occurred_at, payload, \
                             correlation_id, causation_id";

/// Turns a `keel_events` row back into an envelope; a row that does not parse is poison.
pub(crate) fn envelope_from(row: &sqlx::any::AnyRow) -> Result<Envelope, String> {
    let text = |column: &str| -> Result<String, String> {
        row.try_get::<String, _>(column)
            .map_err(|e| format!("column {column}: {e}"))
    };
    let id = text("id")?;
    let id: EventId = id.parse().map_err(|e| format!("event id `{id}`: {e}"))?;
    let occurred_at = time::OffsetDateTime::parse(
        &text("occurred_at")?,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| format!("occurred_at: {e}"))?;
    let payload: serde_json::Value = serde_json::from_str(&text("payload")?)
        .map_err(|e| format!("the payload is not JSON: {e}"))?;
    let correlation_id = text("correlation_id")?
        .parse()
        .map_err(|e| format!("correlation_id: {e}"))?;
    let causation_id = row
        .try_get::<Option<String>, _>("causation_id")
        .map_err(|e| format!("causation_id: {e}"))?
        .map(|c| c.parse::<EventId>())
        .transpose()
        .map_err(|e| format!("causation_id: {e}"))?;
    Ok(Envelope {
        id,
        name: text("name")?,
        aggregate_type: text("aggregate_type")?,
        aggregate_id: text("aggregate_id")?,
        occurred_at,
        payload,
        correlation_id,
        causation_id,
    })
}

/// Claims up to `limit` due deliveries for `lease`, with their events.
///
/// On PostgreSQL, one statement (atomic on its own) leases the rows and returns them
/// joined with their events: one round trip and one commit per batch. The rows locked by
/// the statement are updated by their physical address (`ctid`, stable while locked), and
/// the lease leaves every indexed column alone, so PostgreSQL can update them in place
/// (HOT).
pub(crate) async fn claim(db: &Database, limit: u32, lease: Duration) -> Result<Vec<Claim>, Error> {
    let token = uuid::Uuid::now_v7().simple().to_string();
    let now = now_millis();
    let until = now + lease.as_millis() as i64;
    if db.backend() == Backend::Postgres {
        let sql = format!(
            "WITH c AS (
                 SELECT ctid FROM keel_deliveries
                 WHERE status = 'pending' AND next_attempt_at <= $3 AND ordering_key IS NULL
                   AND (leased_until IS NULL OR leased_until < $3)
                 ORDER BY next_attempt_at LIMIT $4
                 FOR UPDATE SKIP LOCKED),
             u AS (
                 UPDATE keel_deliveries d
                 SET leased_until = $1, leased_by = $2, attempts = d.attempts + 1
                 WHERE d.ctid = ANY (ARRAY(SELECT ctid FROM c))
                 RETURNING d.event_id AS claimed_id, d.handler AS claimed_handler,
                           d.attempts AS claimed_attempts)
             SELECT u.claimed_id, u.claimed_handler, u.claimed_attempts, {EVENT_COLUMNS}
             FROM u LEFT JOIN keel_events e ON e.id = u.claimed_id"
        );
        let mut conn = db.acquire().await?;
        let rows = sqlx::query::<Db>(AssertSqlSafe(sql))
            .bind(until)
            .bind(token.as_str())
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
        let claimed_at = std::time::Instant::now();
        let mut claims = Vec::with_capacity(rows.len());
        for row in &rows {
            let found: Option<String> = row.try_get("id")?;
            let event = match found {
                Some(_) => envelope_from(row).map(Arc::new),
                None => Err("event row not found".to_owned()),
            };
            claims.push(Claim {
                event,
                event_id: row.try_get("claimed_id")?,
                handler: row.try_get("claimed_handler")?,
                attempt: row.try_get::<i64, _>("claimed_attempts")?.max(1) as u32,
                token: token.clone(),
                claimed_at,
            });
        }
        return Ok(claims);
    }
    let sql = "UPDATE keel_deliveries
               SET leased_until = $1, leased_by = $2, attempts = attempts + 1
               WHERE (event_id, handler) IN (
                   SELECT event_id, handler FROM keel_deliveries
                   WHERE status = 'pending' AND next_attempt_at <= $3 AND ordering_key IS NULL
                     AND (leased_until IS NULL OR leased_until < $3)
                   ORDER BY next_attempt_at LIMIT $4)
               RETURNING event_id, handler, attempts";
    let token = &token;
    db.clone()
        .unit_of_work_with(&internal("keel_claim"), async |tx| {
            let rows = sqlx::query(sql)
                .bind(until)
                .bind(token.as_str())
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(tx.conn())
                .await?;
            let mut claims: Vec<Claim> = Vec::with_capacity(rows.len());
            for row in &rows {
                claims.push(Claim {
                    event: Err("event row not found".to_owned()),
                    event_id: row.try_get("event_id")?,
                    handler: row.try_get("handler")?,
                    attempt: row.try_get::<i64, _>("attempts")?.max(1) as u32,
                    token: token.clone(),
                    claimed_at: std::time::Instant::now(),
                });
            }
            load_events(tx, &mut claims).await?;
            Ok(claims)
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Fills in the events of `claims`, read in the claiming transaction.
async fn load_events(
    tx: &mut keel_orchestrator::Tx<'_>,
    claims: &mut [Claim],
) -> Result<(), Error> {
    let mut ids: Vec<String> = claims.iter().map(|c| c.event_id.clone()).collect();
    ids.sort();
    ids.dedup();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM keel_events WHERE id IN ({})",
            in_list(1, chunk.len())
        );
        let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.as_str());
        }
        for row in query.fetch_all(tx.conn()).await? {
            let id: String = row.try_get("id")?;
            let event = envelope_from(&row).map(Arc::new);
            for claim in claims.iter_mut().filter(|c| c.event_id == id) {
                claim.event = event.clone();
            }
        }
    }
    Ok(())
}

/// Claims the next commands of up to `max_keys` ordering keys that no one is handling: for
/// each key, its oldest pending commands in send order, as many as the head's handler takes
/// in one batch. The key row is leased with them, so no other worker touches the key until
/// the group ends; workers never wait on each other (`SKIP LOCKED`).
pub(crate) async fn claim_keyed(
    db: &Database,
    registry: &Registry,
    max_keys: u32,
    lease: Duration,
) -> Result<Vec<Group>, Error> {
    // Keys with due commands and no live lease; PostgreSQL also skips keys another worker
    // is claiming right now.
    macro_rules! free_keys {
        ($lock:literal) => {
            concat!(
                "WITH due AS (
                     SELECT DISTINCT ordering_key FROM (
                         SELECT ordering_key FROM keel_deliveries
                         WHERE status = 'pending' AND ordering_key IS NOT NULL
                           AND next_attempt_at <= $1
                         ORDER BY next_attempt_at LIMIT 1000) d)
                 SELECT k.key FROM keel_keys k JOIN due ON due.ordering_key = k.key
                 WHERE k.leased_until IS NULL OR k.leased_until < $1
                 LIMIT $2",
                $lock
            )
        };
    }
    let sql = match db.backend() {
        Backend::Postgres => free_keys!(" FOR UPDATE OF k SKIP LOCKED"),
        Backend::Sqlite => free_keys!(""),
    };
    let max_batch = registry
        .handlers()
        .map(|h| h.batch_size())
        .max()
        .unwrap_or(1) as i64;
    db.clone()
        .unit_of_work_with(&internal("keel_claim_keyed"), async |tx| {
            let now = now_millis();
            let until = now + lease.as_millis() as i64;
            let keys: Vec<String> = sqlx::query(sql)
                .bind(now)
                .bind(i64::from(max_keys))
                .fetch_all(tx.conn())
                .await?
                .iter()
                .map(|row| row.try_get("key"))
                .collect::<Result<_, _>>()?;
            let mut groups = Vec::with_capacity(keys.len());
            for key in keys {
                let heads = sqlx::query(
                    "SELECT event_id, handler, next_attempt_at, leased_until FROM keel_deliveries
                     WHERE ordering_key = $1 AND status = 'pending' ORDER BY event_id LIMIT $2",
                )
                .bind(key.as_str())
                .bind(max_batch)
                .fetch_all(tx.conn())
                .await?;
                let Some(head) = heads.first() else { continue };
                let free = |row: &sqlx::any::AnyRow| -> Result<bool, sqlx::Error> {
                    let due: i64 = row.try_get("next_attempt_at")?;
                    let leased: Option<i64> = row.try_get("leased_until")?;
                    Ok(due <= now && leased.is_none_or(|l| l < now))
                };
                // Strict order: a head that waits for its retry holds its key.
                if !free(head)? {
                    continue;
                }
                let handler: String = head.try_get("handler")?;
                let batch = registry
                    .handlers()
                    .find(|h| h.name() == handler)
                    .map(|h| h.batch_size())
                    .unwrap_or(1);
                let mut ids = Vec::new();
                for row in heads.iter().take(batch) {
                    let same: String = row.try_get("handler")?;
                    if same != handler || !free(row)? {
                        break;
                    }
                    ids.push(row.try_get::<String, _>("event_id")?);
                }
                let token = uuid::Uuid::now_v7().simple().to_string();
                sqlx::query(
                    "UPDATE keel_keys SET leased_until = $1, leased_by = $2 WHERE key = $3",
                )
                .bind(until)
                .bind(token.as_str())
                .bind(key.as_str())
                .execute(tx.conn())
                .await?;
                let sql = format!(
                    "UPDATE keel_deliveries SET leased_until = $1, leased_by = $2,
                     attempts = attempts + 1
                     WHERE handler = $3 AND status = 'pending' AND event_id IN ({})
                     RETURNING event_id, attempts",
                    in_list(4, ids.len())
                );
                let mut query = sqlx::query::<Db>(AssertSqlSafe(sql))
                    .bind(until)
                    .bind(token.as_str())
                    .bind(handler.as_str());
                for id in &ids {
                    query = query.bind(id.as_str());
                }
                let mut claims = Vec::with_capacity(ids.len());
                for row in query.fetch_all(tx.conn()).await? {
                    claims.push(Claim {
                        event: Err("event row not found".to_owned()),
                        event_id: row.try_get("event_id")?,
                        handler: handler.clone(),
                        attempt: row.try_get::<i64, _>("attempts")?.max(1) as u32,
                        token: token.clone(),
                        claimed_at: std::time::Instant::now(),
                    });
                }
                claims.sort_by(|a, b| a.event_id.cmp(&b.event_id));
                load_events(tx, &mut claims).await?;
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

/// Extends the leases of a group that waited for a delivery slot; returns the claims whose
/// lease still belonged to it (the others were taken over or finished meanwhile and must
/// not run here).
pub(crate) async fn renew(
    db: &Database,
    claims: Vec<Claim>,
    key: Option<&str>,
    lease: Duration,
) -> Result<Vec<Claim>, Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_renew_lease"), async |tx| {
            let until = now_millis() + lease.as_millis() as i64;
            let mut kept = Vec::new();
            for claim in &claims {
                let renewed = sqlx::query(
                    "UPDATE keel_deliveries SET leased_until = $1
                     WHERE event_id = $2 AND handler = $3 AND leased_by = $4 AND status = 'pending'",
                )
                .bind(until)
                .bind(claim.event_id.as_str())
                .bind(claim.handler.as_str())
                .bind(claim.token.as_str())
                .execute(tx.conn())
                .await?
                .rows_affected();
                kept.push(renewed == 1);
            }
            if let (Some(key), Some(claim)) = (key, claims.first()) {
                sqlx::query("UPDATE keel_keys SET leased_until = $1 WHERE key = $2 AND leased_by = $3")
                    .bind(until)
                    .bind(key)
                    .bind(claim.token.as_str())
                    .execute(tx.conn())
                    .await?;
            }
            Ok(kept)
        })
        .await
        .map(|receipt| {
            let kept = receipt.into_value();
            claims.into_iter().zip(kept).filter(|(_, k)| *k).map(|(c, _)| c).collect()
        })
}

/// Ends a group's hold on its ordering key.
pub(crate) async fn release_key(db: &Database, key: &str, token: &str) -> Result<(), Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_release_key"), async |tx| {
            sqlx::query(
                "UPDATE keel_keys SET leased_until = NULL, leased_by = NULL
                 WHERE key = $1 AND leased_by = $2",
            )
            .bind(key)
            .bind(token)
            .execute(tx.conn())
            .await?;
            Ok(())
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Marks deliveries done (for handlers that did not write through their context), for
/// several handlers at once. Each statement is atomic on its own and the marks are
/// independent, so no transaction wraps them: one round trip per handler.
pub(crate) async fn mark_done(
    db: &Database,
    by_handler: &std::collections::BTreeMap<&str, Vec<String>>,
) -> Result<(), Error> {
    if db.backend() == Backend::Postgres {
        let mut conn = db.acquire().await?;
        for (handler, event_ids) in by_handler {
            outbox::mark_done(&mut conn, event_ids, handler).await?;
        }
        return Ok(());
    }
    db.clone()
        .unit_of_work_with(&internal("keel_mark_done"), async |tx| {
            for (handler, event_ids) in by_handler {
                outbox::mark_done(tx.conn(), event_ids, handler).await?;
            }
            Ok(())
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Adds a failed attempt to a delivery's error history.
async fn insert_error(
    tx: &mut keel_orchestrator::Tx<'_>,
    (event_id, handler): (&str, &str),
    attempt: u32,
    failed_at: i64,
    error: &str,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO keel_delivery_errors (event_id, handler, attempt, failed_at, error)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(handler)
    .bind(attempt as i32)
    .bind(failed_at)
    .bind(error)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// What to do after a failed attempt.
pub(crate) enum Next {
    RetryAt(i64),
    Dead,
}

/// Records a failed attempt, if the delivery is still this claim's, and schedules the
/// next one or moves the delivery to the dead letter.
/// `failed_at` is when the attempt failed (the retry delay counts from it).
pub(crate) async fn record_failure(
    db: &Database,
    claim: &Claim,
    error: &str,
    failed_at: i64,
    next: Next,
) -> Result<(), Error> {
    let (status, next_attempt_at) = match next {
        Next::RetryAt(at) => (PENDING, at),
        Next::Dead => (DEAD, failed_at),
    };
    db.clone()
        .unit_of_work_with(&internal("keel_record_failure"), async |tx| {
            let now = failed_at;
            let updated = sqlx::query(
                "UPDATE keel_deliveries SET status = $1, next_attempt_at = $2, leased_until = NULL,
                 leased_by = NULL, last_error = $3, updated_at = $4
                 WHERE event_id = $5 AND handler = $6 AND status = $7 AND leased_by = $8",
            )
            .bind(status)
            .bind(next_attempt_at)
            .bind(error)
            .bind(now)
            .bind(claim.event_id.as_str())
            .bind(claim.handler.as_str())
            .bind(PENDING)
            .bind(claim.token.as_str())
            .execute(tx.conn())
            .await?
            .rows_affected();
            if updated == 1 {
                let key = (claim.event_id.as_str(), claim.handler.as_str());
                insert_error(tx, key, claim.attempt, now, error).await?;
            }
            Ok(())
        })
        .await
        .map(|receipt| receipt.into_value())
}

/// Creates the delivery rows of events written without routing (by a producer that did
/// not know the handlers), using this process's registry. An event no handler is
/// registered for goes to the dead letter. Returns how many events were routed.
pub(crate) async fn route_unrouted(
    db: &Database,
    registry: &Registry,
    limit: u32,
) -> Result<usize, Error> {
    let sql = match db.backend() {
        Backend::Postgres => {
            "WITH c AS (SELECT id FROM keel_events WHERE NOT routed
                        ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             UPDATE keel_events e SET routed = TRUE FROM c WHERE e.id = c.id
             RETURNING e.id, e.name, e.ordering_key"
        }
        Backend::Sqlite => {
            "UPDATE keel_events SET routed = TRUE WHERE id IN
                 (SELECT id FROM keel_events WHERE NOT routed ORDER BY created_at LIMIT $1)
             RETURNING id, name, ordering_key"
        }
    };
    db.clone()
        .unit_of_work_with(&internal("keel_route"), async |tx| {
            let now = now_millis();
            let rows = sqlx::query(sql)
                .bind(i64::from(limit))
                .fetch_all(tx.conn())
                .await?;
            for row in &rows {
                let id: String = row.try_get("id")?;
                let name: String = row.try_get("name")?;
                let key: Option<String> = row.try_get("ordering_key")?;
                let handlers = registry.handlers_for(&name);
                if handlers.is_empty() {
                    let error = format!(
                        "no handler is registered for event `{name}` in the process that routed \
                         it; register a handler, then retry this entry from the dead letter"
                    );
                    insert_delivery(tx, &id, NO_HANDLER, DEAD, Some(&error), None, now).await?;
                    insert_error(tx, (id.as_str(), NO_HANDLER), 0, now, &error).await?;
                }
                for handler in handlers {
                    let key = key.as_deref();
                    insert_delivery(tx, &id, handler.name(), PENDING, None, key, now).await?;
                }
                if let Some(key) = key.as_deref() {
                    outbox::insert_keys(tx.conn(), std::iter::once(key)).await?;
                }
            }
            Ok(rows.len())
        })
        .await
        .map(|receipt| receipt.into_value())
}

async fn insert_delivery(
    tx: &mut keel_orchestrator::Tx<'_>,
    event_id: &str,
    handler: &str,
    status: &str,
    error: Option<&str>,
    key: Option<&str>,
    now: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO keel_deliveries (event_id, handler, status, attempts, next_attempt_at,
         last_error, updated_at, ordering_key) VALUES ($1, $2, $3, 0, $4, $5, $4, $6)
         ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(handler)
    .bind(status)
    .bind(now)
    .bind(error)
    .bind(key)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Whether any delivery is unfinished (pending, or its event not routed yet), checked in
/// one statement so that routing between two checks cannot hide work. Stops at the first
/// row found, so a deep backlog costs no more than an empty one.
pub(crate) async fn any_unfinished(db: &Database) -> Result<bool, Error> {
    let mut conn = db.acquire().await?;
    let (unfinished,): (i64,) = sqlx::query_as(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM keel_deliveries WHERE status = 'pending')
                       OR EXISTS (SELECT 1 FROM keel_events WHERE NOT routed)
                THEN 1 ELSE 0 END",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(unfinished == 1)
}

/// Removes done deliveries (and their error history) older than `before`, at most `limit`
/// per call, then the events those deliveries belonged to if no delivery of theirs is left.
/// Every statement is driven by an index or by the keys just deleted. Returns the rows
/// removed (0 when nothing is left to purge).
pub(crate) async fn purge(db: &Database, before: i64, limit: u32) -> Result<u64, Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_purge"), async |tx| {
            let rows = sqlx::query(
                "DELETE FROM keel_deliveries WHERE (event_id, handler) IN
                 (SELECT event_id, handler FROM keel_deliveries
                  WHERE status = 'done' AND updated_at < $1 LIMIT $2)
                 RETURNING event_id, handler",
            )
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(tx.conn())
            .await?;
            let mut removed = rows.len() as u64;
            let mut pairs: Vec<(String, String)> = Vec::with_capacity(rows.len());
            for row in &rows {
                pairs.push((row.try_get("event_id")?, row.try_get("handler")?));
            }
            for chunk in pairs.chunks(400) {
                let list = (0..chunk.len())
                    .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
                    .collect::<Vec<_>>()
                    .join(",");
                let sql = format!(
                    "DELETE FROM keel_delivery_errors WHERE (event_id, handler) IN ({list})"
                );
                let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
                for (event_id, handler) in chunk {
                    query = query.bind(event_id.as_str()).bind(handler.as_str());
                }
                removed += query.execute(tx.conn()).await?.rows_affected();
            }
            let mut ids: Vec<&str> = pairs.iter().map(|(e, _)| e.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "DELETE FROM keel_events WHERE id IN ({}) AND NOT EXISTS
                     (SELECT 1 FROM keel_deliveries d WHERE d.event_id = keel_events.id)",
                    in_list(1, chunk.len())
                );
                let mut query = sqlx::query::<Db>(AssertSqlSafe(sql));
                for id in chunk {
                    query = query.bind(*id);
                }
                removed += query.execute(tx.conn()).await?.rows_affected();
            }
            Ok(removed)
        })
        .await
        .map(|receipt| receipt.into_value())
}
