//! Accepting messages from another system on PostgreSQL: the events (each once, by id) and
//! their deliveries to one handler, in one short transaction.
//!
//! A message received again while its delivery runs must not get a second delivery. The
//! running handler's unit of work deletes the delivery and appends to `keel_done` when it
//! commits. The insert checks `keel_done` with the snapshot its statement began with; if
//! the handler commits after that (the insert waits for it on the delivery's key, or on
//! another accept's row before it), the insert finds the deleted delivery gone and the done
//! log not yet written, and creates the delivery again. So a second statement, with a new
//! snapshot that sees every such commit, removes the deliveries just created that the done
//! log has, before the accept commits (`keel_drop_done`, migration `0009_accept.sql`).
//!
//! A command keeps its ordering key. An ordered one is numbered on from the key's counter,
//! in the order received, as the outbox write numbers them in commit order (the key's row
//! stays locked until the transaction ends); an unordered one only makes sure its key's
//! row exists, so that accepts of one hot key do not wait for each other.

use sqlx::Postgres;
use uuid::Uuid;

use super::outbox::stored_headers;
use crate::options::internal;
use crate::outbox::{DEAD, Incoming, PENDING};
use crate::{Database, Error};

/// The events are written routed: their only delivery is the one accepted here (other
/// handlers of this service receive their own copies). A delivery is not created when it
/// exists (`ON CONFLICT`). One already done is removed by [`DROP_DONE`] after this
/// statement: the check for pending arrivals lives there only, because as an anti-join here
/// it was planned as a sequential scan of the done log. Dead arrivals are also checked here,
/// so that outside the race no error row is written for them. Ordered commands (`$13`:
/// their keys) are numbered per key, in the order received, on from the key's counter;
/// every key (`$12`) gets its row.
const ACCEPT: &str = "
    WITH ku AS (
        INSERT INTO keel_keys (key, next_seq)
        SELECT k, count(*) FROM UNNEST($13::text[]) AS t (k) WHERE k IS NOT NULL GROUP BY k
        ON CONFLICT (key) DO UPDATE
        SET next_seq = keel_keys.next_seq + EXCLUDED.next_seq, last_used = now()
        RETURNING key, next_seq),
    kn AS (
        INSERT INTO keel_keys (key)
        SELECT DISTINCT k FROM UNNEST($12::text[], $13::text[]) AS t (k, o)
        WHERE k IS NOT NULL AND o IS NULL
        ON CONFLICT DO NOTHING),
    q AS (
        SELECT t.i AS q_id, t.k AS q_key, ku.next_seq - count(*) OVER (PARTITION BY t.k)
                    + row_number() OVER (PARTITION BY t.k ORDER BY t.o) AS q_seq
        FROM UNNEST($1::uuid[], $13::text[]) WITH ORDINALITY AS t (i, k, o)
        JOIN ku ON ku.key = t.k
        UNION ALL
        SELECT i, k, NULL FROM UNNEST($1::uuid[], $12::text[], $13::text[]) AS t (i, k, o)
        WHERE k IS NOT NULL AND o IS NULL),
    e AS (
        INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at, payload,
                                 correlation_id, causation_id, routed, ordering_key, key_seq,
                                 headers)
        SELECT i, n, t, a, o, p, c, k, TRUE, q_key, q_seq, h
        FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                    $6::jsonb[], $7::uuid[], $8::uuid[], $14::jsonb[])
             AS u (i, n, t, a, o, p, c, k, h)
        LEFT JOIN q ON q_id = i
        ON CONFLICT (id) DO NOTHING),
    d AS (
        INSERT INTO keel_deliveries (event_id, handler, status, last_error, ordering_key, key_seq)
        SELECT i, $9, s, m, q_key, q_seq
        FROM UNNEST($1::uuid[], $10::text[], $11::text[]) AS u (i, s, m)
        LEFT JOIN q ON q_id = i
        WHERE s <> 'dead'
           OR NOT EXISTS (SELECT 1 FROM keel_done f WHERE f.event_id = u.i AND f.handler = $9)
        ON CONFLICT DO NOTHING
        RETURNING event_id, status, last_error),
    x AS (
        INSERT INTO keel_delivery_errors (event_id, handler, attempt, error)
        SELECT event_id, $9, 0, last_error FROM d WHERE status = 'dead'
        ON CONFLICT DO NOTHING)
    SELECT event_id FROM d";

/// Removes the deliveries just created (`$2`) whose handler completed them meanwhile;
/// returns how many (migration `0009_accept.sql`: a function, so that the done log is only
/// ever looked up by key).
const DROP_DONE: &str = "SELECT keel_drop_done($1, $2)";

pub(super) async fn accept(
    db: &Database<Postgres>,
    handler: &str,
    incoming: &[Incoming],
) -> Result<u64, Error> {
    let mut ids = Vec::with_capacity(incoming.len());
    let (mut names, mut types, mut aggregates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut occurred, mut payloads) = (Vec::new(), Vec::new());
    let (mut correlations, mut causations) = (Vec::new(), Vec::new());
    let (mut statuses, mut errors) = (Vec::new(), Vec::new());
    let (mut keys, mut ordered_keys, mut headers) = (Vec::new(), Vec::new(), Vec::new());
    for message in incoming {
        let e = &message.envelope;
        ids.push(*e.id.as_uuid());
        names.push(e.name.as_str());
        types.push(e.aggregate_type.as_str());
        aggregates.push(e.aggregate_id.as_str());
        occurred.push(e.occurred_at);
        payloads.push(&e.payload);
        correlations.push(e.correlation_id);
        causations.push(e.causation_id.map(|c| *c.as_uuid()));
        statuses.push(if message.dead.is_some() {
            DEAD
        } else {
            PENDING
        });
        errors.push(message.dead.as_deref());
        keys.push(message.key());
        ordered_keys.push(message.ordered_key());
        headers.push(stored_headers(e));
    }
    let ids: Vec<Uuid> = ids;
    let ids = &ids;
    let created = db
        .clone()
        .unit_of_work_with(&internal("keel_accept"), async |tx| {
            let inserted: Vec<Uuid> = sqlx::query_scalar(ACCEPT)
                .bind(ids)
                .bind(&names)
                .bind(&types)
                .bind(&aggregates)
                .bind(&occurred)
                .bind(&payloads)
                .bind(&correlations)
                .bind(&causations)
                .bind(handler)
                .bind(&statuses)
                .bind(&errors)
                .bind(&keys)
                .bind(&ordered_keys)
                .bind(&headers)
                .fetch_all(tx.conn())
                .await?;
            if inserted.is_empty() {
                return Ok(0);
            }
            let removed: i64 = sqlx::query_scalar(DROP_DONE)
                .bind(handler)
                .bind(&inserted)
                .fetch_one(tx.conn())
                .await?;
            Ok(inserted.len() as u64 - removed.max(0) as u64)
        })
        .await?
        .into_value();
    if created > 0 {
        // Work for every relay on the database, as a commit's deliveries are: another
        // process's relay may be idle while this one's slots are full. Best effort: the
        // messages are accepted, and relays that miss the wake-up find them when they poll.
        if let Ok(mut conn) = db.acquire().await {
            db.notify_relays(&mut conn).await;
        }
    }
    Ok(created)
}
