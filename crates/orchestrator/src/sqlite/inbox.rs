//! Accepting messages from another system on SQLite: the events (each once, by id) and
//! their deliveries to one handler, in one short unit of work. A command keeps its ordering
//! key; an ordered one is numbered on from the key's counter, in the order received.

use sqlx::Sqlite;

use super::outbox::{add_keys, number, occurred_at, stored_headers};
use crate::options::internal;
use crate::outbox::{DEAD, Incoming, PENDING};
use crate::{Database, Error};

pub(super) async fn accept(
    db: &Database<Sqlite>,
    handler: &str,
    incoming: &[Incoming],
) -> Result<u64, Error> {
    db.clone()
        .unit_of_work_with(&internal("keel_accept"), async |tx| {
            let ordered: Vec<_> = incoming
                .iter()
                .map(|m| (&m.envelope, m.ordered_key()))
                .collect();
            let seqs = number(tx.conn(), &ordered).await?;
            let unordered = incoming
                .iter()
                .filter(|m| !m.ordered)
                .filter_map(Incoming::key)
                .collect();
            add_keys(tx.conn(), unordered).await?;
            let mut created = 0;
            for message in incoming {
                let e = &message.envelope;
                let (key, seq) = (message.key(), seqs.get(&e.id).copied());
                // Routed: its only delivery is the one accepted here.
                sqlx::query(
                    "INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at,
                         payload, correlation_id, causation_id, routed, ordering_key, key_seq,
                         headers)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, TRUE, $9, $10, $11)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(e.id.to_string())
                .bind(e.name.as_str())
                .bind(e.aggregate_type.as_str())
                .bind(e.aggregate_id.as_str())
                .bind(occurred_at(e)?)
                .bind(e.payload.to_string())
                .bind(e.correlation_id.to_string())
                .bind(e.causation_id.map(|c| c.to_string()))
                .bind(key)
                .bind(seq)
                .bind(stored_headers(e))
                .execute(tx.conn())
                .await?;
                let status = if message.dead.is_some() {
                    DEAD
                } else {
                    PENDING
                };
                let inserted = sqlx::query(
                    "INSERT INTO keel_deliveries (event_id, handler, status, last_error,
                         ordering_key, key_seq)
                     SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS
                         (SELECT 1 FROM keel_done WHERE event_id = $1 AND handler = $2)
                     ON CONFLICT DO NOTHING",
                )
                .bind(e.id.to_string())
                .bind(handler)
                .bind(status)
                .bind(message.dead.as_deref())
                .bind(key)
                .bind(seq)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if let (1, Some(error)) = (inserted, &message.dead) {
                    sqlx::query(
                        "INSERT INTO keel_delivery_errors (event_id, handler, attempt, error)
                         VALUES ($1, $2, 0, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(e.id.to_string())
                    .bind(handler)
                    .bind(error.as_str())
                    .execute(tx.conn())
                    .await?;
                }
                created += inserted;
            }
            Ok(created)
        })
        .await
        .map(|receipt| receipt.into_value())
}
