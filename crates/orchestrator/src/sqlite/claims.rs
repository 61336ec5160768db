//! Claims on SQLite: due deliveries leased in a short unit of work, with their events;
//! keyed commands claimed key by key; leases renewed and released.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{Envelope, EventId};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};
use time::OffsetDateTime;

use super::{CHUNK, from_ms, now, now_ms, to_ms};
use crate::options::internal;
use crate::outbox::{Claim, Claimed, Group};
use crate::store::millis;
use crate::{Database, Error};

pub(super) const EVENT_COLUMNS: &str = "id, name, aggregate_type, aggregate_id, occurred_at, \
    payload, correlation_id, causation_id, headers";

fn parse_id(text: &str) -> Result<EventId, String> {
    text.parse().map_err(|e| format!("event id `{text}`: {e}"))
}

/// Turns a `keel_events` row back into an envelope; a row that does not parse is poison.
pub(super) fn envelope_from(row: &SqliteRow) -> Result<Envelope, String> {
    let text = |column: &str| -> Result<String, String> {
        row.try_get::<String, _>(column)
            .map_err(|e| format!("column {column}: {e}"))
    };
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
        .map(|c| parse_id(&c))
        .transpose()?;
    let headers = row
        .try_get::<Option<String>, _>("headers")
        .map_err(|e| format!("headers: {e}"))?
        .map(|h| serde_json::from_str(&h).map_err(|e| format!("the headers are not JSON: {e}")))
        .transpose()?
        .unwrap_or_default();
    Ok(Envelope {
        id: parse_id(&text("id")?)?,
        name: text("name")?,
        aggregate_type: text("aggregate_type")?,
        aggregate_id: text("aggregate_id")?,
        occurred_at,
        payload,
        correlation_id,
        causation_id,
        headers,
    })
}

/// Fills in the events of `claims`, read in the claiming transaction.
async fn load_events(conn: &mut SqliteConnection, claims: &mut [Claim]) -> Result<(), Error> {
    let mut ids: Vec<String> = claims.iter().map(|c| c.event_id.to_string()).collect();
    ids.sort();
    ids.dedup();
    for chunk in ids.chunks(CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {EVENT_COLUMNS} FROM keel_events WHERE id IN ("
        ));
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(id.as_str());
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *conn).await? {
            let event = envelope_from(&row).map(Arc::new);
            // A row whose id does not parse cannot be matched to its claims: they keep
            // "event row not found" and go to the dead letter.
            let Ok(id) = parse_id(&row.try_get::<String, _>("id")?) else {
                continue;
            };
            for claim in claims.iter_mut().filter(|c| c.event_id == id) {
                claim.event = event.clone();
            }
        }
    }
    Ok(())
}

fn claim_from(row: &SqliteRow, token: uuid::Uuid) -> Result<Claim, Error> {
    let id: String = row.try_get("event_id")?;
    let event_id = parse_id(&id).map_err(|e| Error::rejected(std::io::Error::other(e)))?;
    Ok(Claim {
        event: Err("event row not found".to_owned()),
        event_id,
        handler: row.try_get("handler")?,
        attempt: row.try_get::<i64, _>("attempts")?.max(1) as u32,
        retried_from: row.try_get::<i64, _>("retried_from")?.max(0) as u32,
        token,
        claimed_at: std::time::Instant::now(),
    })
}

pub(super) async fn claim(
    db: &Database<Sqlite>,
    limit: u32,
    lease: Duration,
    handlers: &[&str],
    due_from: Option<OffsetDateTime>,
) -> Result<Claimed, Error> {
    let handlers = &serde_json::to_string(handlers).expect("names serialize");
    let due_from = due_from.map_or(i64::MIN, to_ms);
    db.clone()
        .unit_of_work_with(&internal("keel_claim"), async |tx| {
            let token = crate::operations::lease_token();
            let now = now(tx.conn()).await?;
            let rows = sqlx::query(
                "UPDATE keel_deliveries
                 SET leased_until = $1, leased_by = $2, attempts = attempts + 1
                 WHERE (event_id, handler) IN (
                     SELECT event_id, handler FROM keel_deliveries
                     WHERE status = 'pending' AND next_attempt_at <= $3
                       AND next_attempt_at >= $6 AND ordering_key IS NULL
                       AND (leased_until IS NULL OR leased_until < $3)
                       AND handler IN (SELECT value FROM json_each($5))
                     ORDER BY next_attempt_at LIMIT $4)
                 RETURNING event_id, handler, attempts, retried_from, next_attempt_at",
            )
            .bind(now + millis(lease))
            .bind(token.to_string())
            .bind(now)
            .bind(i64::from(limit))
            .bind(handlers.as_str())
            .bind(due_from)
            .fetch_all(tx.conn())
            .await?;
            let mut claimed = Claimed::default();
            for row in &rows {
                let due = from_ms(row.try_get("next_attempt_at")?);
                claimed.last_due = claimed.last_due.max(Some(due));
                claimed.claims.push(claim_from(row, token)?);
            }
            load_events(tx.conn(), &mut claimed.claims).await?;
            Ok(claimed)
        })
        .await
        .map(|receipt| receipt.into_value())
}

pub(super) async fn claim_keyed(
    db: &Database<Sqlite>,
    max_keys: u32,
    lease: Duration,
    handlers: &[&str],
    batch_size: &(dyn Fn(&str) -> usize + Sync),
    max_batch: usize,
) -> Result<Vec<Group>, Error> {
    let names = &serde_json::to_string(handlers).expect("names serialize");
    db.clone()
        .unit_of_work_with(&internal("keel_claim_keyed"), async |tx| {
            let now = now(tx.conn()).await?;
            let until = now + millis(lease);
            // Each key once, by its head (its first pending command): a key's backlog,
            // a head waiting for its retry or a key leased by a dead worker holds that
            // key alone, never the others.
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT key FROM (
                     SELECT k.key, k.leased_until AS key_lease,
                            (SELECT d.rowid FROM keel_deliveries d
                             WHERE d.ordering_key = k.key AND d.status = 'pending'
                             ORDER BY d.key_seq, d.event_id LIMIT 1) AS head
                     FROM keel_keys k) c
                 JOIN keel_deliveries h ON h.rowid = c.head
                 WHERE (c.key_lease IS NULL OR c.key_lease < $1)
                   AND h.next_attempt_at <= $1
                   AND (h.leased_until IS NULL OR h.leased_until < $1)
                   AND h.handler IN (SELECT value FROM json_each($3))
                 ORDER BY h.next_attempt_at LIMIT $2",
            )
            .bind(now)
            .bind(i64::from(max_keys))
            .bind(names.as_str())
            .fetch_all(tx.conn())
            .await?;
            let mut groups = Vec::with_capacity(keys.len());
            for key in keys {
                let heads: Vec<(String, String, bool)> = sqlx::query_as(
                    "SELECT event_id, handler,
                            next_attempt_at <= $2 AND (leased_until IS NULL OR leased_until < $2)
                     FROM keel_deliveries
                     WHERE ordering_key = $1 AND status = 'pending'
                     ORDER BY key_seq, event_id LIMIT $3",
                )
                .bind(key.as_str())
                .bind(now)
                .bind(max_batch as i64)
                .fetch_all(tx.conn())
                .await?;
                // Strict order: a head that waits for its retry holds its key, and so does
                // a head for a handler another process runs.
                let Some((_, handler, true)) = heads.first() else {
                    continue;
                };
                if !handlers.contains(&handler.as_str()) {
                    continue;
                }
                let token = crate::operations::lease_token();
                sqlx::query(
                    "UPDATE keel_keys SET leased_until = $1, leased_by = $2 WHERE key = $3",
                )
                .bind(until)
                .bind(token.to_string())
                .bind(key.as_str())
                .execute(tx.conn())
                .await?;
                let mut query = QueryBuilder::<Sqlite>::new(
                    "UPDATE keel_deliveries SET attempts = attempts + 1, leased_until = ",
                );
                query
                    .push_bind(until)
                    .push(", leased_by = ")
                    .push_bind(token.to_string())
                    .push(" WHERE status = 'pending' AND handler = ")
                    .push_bind(handler.as_str())
                    .push(" AND event_id IN (");
                let mut ids = query.separated(", ");
                for (id, _, _) in heads
                    .iter()
                    .take(batch_size(handler))
                    .take_while(|(_, h, free)| h == handler && *free)
                {
                    ids.push_bind(id.as_str());
                }
                query.push(") RETURNING event_id, handler, attempts, retried_from");
                let rows = query.build().fetch_all(tx.conn()).await?;
                let mut claims = rows
                    .iter()
                    .map(|row| claim_from(row, token))
                    .collect::<Result<Vec<_>, _>>()?;
                claims.sort_by_key(|c| *c.event_id.as_uuid());
                load_events(tx.conn(), &mut claims).await?;
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

pub(super) async fn renew(
    db: &Database<Sqlite>,
    claims: &[Claim],
    key: Option<&str>,
    lease: Duration,
) -> Result<Vec<bool>, Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_renew_lease"), async |tx| {
            let until = now(tx.conn()).await? + millis(lease);
            let mut kept = Vec::with_capacity(claims.len());
            for claim in claims {
                let renewed = sqlx::query(
                    "UPDATE keel_deliveries SET leased_until = $1
                     WHERE event_id = $2 AND handler = $3 AND leased_by = $4 AND status = 'pending'",
                )
                .bind(until)
                .bind(claim.event_id.to_string())
                .bind(claim.handler.as_str())
                .bind(claim.token.to_string())
                .execute(tx.conn())
                .await?
                .rows_affected();
                kept.push(renewed == 1);
            }
            if let (Some(key), Some(claim)) = (key, claims.first()) {
                sqlx::query("UPDATE keel_keys SET leased_until = $1 WHERE key = $2 AND leased_by = $3")
                    .bind(until)
                    .bind(key)
                    .bind(claim.token.to_string())
                    .execute(tx.conn())
                    .await?;
            }
            Ok(kept)
        })
        .await
        .map(|receipt| receipt.into_value())
}

pub(super) async fn release(db: &Database<Sqlite>, claims: &[Claim]) -> Result<(), Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_release_leases"), async |tx| {
            for claim in claims {
                sqlx::query(concat!(
                    "UPDATE keel_deliveries
                     SET leased_until = NULL, leased_by = NULL, attempts = max(attempts - 1, 0),
                         next_attempt_at = min(next_attempt_at, ",
                    now_ms!(),
                    ")
                     WHERE event_id = $1 AND handler = $2 AND leased_by = $3 AND status = 'pending'",
                ))
                .bind(claim.event_id.to_string())
                .bind(claim.handler.as_str())
                .bind(claim.token.to_string())
                .execute(tx.conn())
                .await?;
            }
            Ok(())
        })
        .await
        .map(|receipt| receipt.into_value())
}

pub(super) async fn release_key(
    db: &Database<Sqlite>,
    key: &str,
    token: uuid::Uuid,
) -> Result<(), Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_release_key"), async |tx| {
            sqlx::query(
                "UPDATE keel_keys SET leased_until = NULL, leased_by = NULL
                 WHERE key = $1 AND leased_by = $2",
            )
            .bind(key)
            .bind(token.to_string())
            .execute(tx.conn())
            .await?;
            Ok(())
        })
        .await
        .map(|receipt| receipt.into_value())
}
