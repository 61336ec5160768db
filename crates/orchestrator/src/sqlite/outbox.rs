//! The outbox write on SQLite.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use keel_domain::{Envelope, EventId};
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};

use super::{CHUNK, now_ms, savepoint};
use crate::Error;
use crate::outbox::Outgoing;
use crate::store::millis;

/// An envelope's headers as stored: a JSON object, or `NULL` when it has none.
pub(super) fn stored_headers(e: &Envelope) -> Option<String> {
    (!e.headers.is_empty()).then(|| {
        serde_json::Value::from_iter(
            e.headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str()))),
        )
        .to_string()
    })
}

pub(super) fn occurred_at(e: &Envelope) -> Result<String, Error> {
    e.occurred_at
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|err| Error::rejected(std::io::Error::other(err.to_string())))
}

/// The outbox write: multi-row inserts, chunked under SQLite's parameter limit, sent to the
/// driver as one batch of statements (each statement a round trip to the connection's
/// thread otherwise). Deliveries go to this process's handlers (reserved for its fast path
/// when it has one) and to every other subscription recorded in `keel_subscriptions`. The
/// fast path's lease ends at SQLite's clock plus the lease.
///
/// In a unit of work (`outgoing.marker`), the batch first releases the unit of work's
/// savepoint (see `transaction::verify`), so nothing is written if the steps ended the
/// transaction: `Ok(false)`.
pub(super) async fn write(
    conn: &mut SqliteConnection,
    outgoing: &Outgoing<'_>,
) -> Result<bool, Error> {
    let mut release = outgoing.marker.is_some();
    let messages: Vec<(&Envelope, Option<&str>)> = outgoing.messages().collect();
    let ordered: Vec<(&Envelope, Option<&str>)> = messages
        .iter()
        .map(|(e, _)| *e)
        .zip(outgoing.ordered_keys())
        .collect();
    let unordered: BTreeSet<&str> = messages
        .iter()
        .zip(&ordered)
        .filter_map(|((_, key), (_, ordered))| key.filter(|_| ordered.is_none()))
        .collect();
    // Keys are numbered by statements of their own, which must not run outside the
    // transaction: the savepoint is released before them.
    if release && (!unordered.is_empty() || ordered.iter().any(|(_, k)| k.is_some())) {
        if !super::transaction::verify(conn).await? {
            return Ok(false);
        }
        release = false;
    }
    let seqs = number(conn, &ordered).await?;
    add_keys(conn, unordered).await?;
    let seq_of = |e: &Envelope| seqs.get(&e.id).copied();

    let mut batch = QueryBuilder::<Sqlite>::new("");
    let mut statements = 0;
    let mut next = |batch: &mut QueryBuilder<Sqlite>, sql: &str| {
        if statements > 0 {
            batch.push("; ");
        }
        statements += 1;
        batch.push(sql);
    };
    if release {
        next(&mut batch, concat!("RELEASE ", savepoint!()));
    }
    for chunk in messages.chunks(CHUNK) {
        next(
            &mut batch,
            "INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at, \
             payload, correlation_id, causation_id, routed, ordering_key, key_seq, headers) ",
        );
        let mut failed = None;
        batch.push_values(chunk, |mut row, (e, key)| {
            let occurred = occurred_at(e).unwrap_or_else(|err| {
                failed = Some(err);
                String::new()
            });
            row.push_bind(e.id.to_string())
                .push_bind(e.name.as_str())
                .push_bind(e.aggregate_type.as_str())
                .push_bind(e.aggregate_id.as_str())
                .push_bind(occurred)
                .push_bind(e.payload.to_string())
                .push_bind(e.correlation_id.to_string())
                .push_bind(e.causation_id.map(|c| c.to_string()))
                .push_bind(!outgoing.handlers_of(e).is_empty())
                .push_bind(*key)
                .push_bind(seq_of(e))
                .push_bind(stored_headers(e));
        });
        if let Some(err) = failed {
            return Err(err);
        }
    }

    let lease_ms = outgoing.lease.map(|(_, lease)| millis(lease));
    let token = outgoing.lease.map(|(token, _)| token.to_string());
    let mut deliveries = Vec::new();
    for (n, (e, key)) in messages.iter().enumerate() {
        let leased = outgoing.reserved(n);
        for handler in outgoing.handlers_of(e) {
            deliveries.push((e.id.to_string(), *handler, leased, *key, seq_of(e)));
        }
    }
    for chunk in deliveries.chunks(CHUNK) {
        next(
            &mut batch,
            "INSERT INTO keel_deliveries (event_id, handler, attempts, next_attempt_at, \
             leased_until, leased_by, ordering_key, key_seq) ",
        );
        batch.push_values(chunk, |mut row, (id, handler, leased, key, seq)| {
            // A delivery reserved for the fast path counts as its first attempt, so that a
            // relay taking it over after a crash counts on from there, and is due when its
            // lease ends: claims do not read it before.
            row.push_bind(id.as_str())
                .push_bind(*handler)
                .push_bind(i32::from(*leased));
            match lease_ms.filter(|_| *leased) {
                Some(ms) => {
                    // `next_attempt_at` and `leased_until`: both the lease's end.
                    for _ in 0..2 {
                        row.push(concat!("(", now_ms!(), " + "));
                        row.push_bind_unseparated(ms).push_unseparated(")");
                    }
                }
                None => {
                    row.push(now_ms!());
                    row.push_bind(None::<i64>);
                }
            }
            row.push_bind(token.as_deref().filter(|_| *leased))
                .push_bind(*key)
                .push_bind(*seq);
        });
    }

    // The deliveries of every other subscription, whichever process runs it; an event
    // without local handlers is routed if a subscription took it.
    for chunk in messages.chunks(CHUNK) {
        let ids = |batch: &mut QueryBuilder<Sqlite>| {
            let mut list = batch.separated(", ");
            for (e, _) in chunk {
                list.push_bind(e.id.to_string());
            }
            batch.push(")");
        };
        next(
            &mut batch,
            "INSERT INTO keel_deliveries (event_id, handler, ordering_key, key_seq) \
             SELECT e.id, s.handler, e.ordering_key, e.key_seq FROM keel_events e \
             JOIN keel_subscriptions s ON s.message = e.name WHERE e.id IN (",
        );
        ids(&mut batch);
        batch.push(" ON CONFLICT DO NOTHING");
        if chunk
            .iter()
            .any(|(e, _)| outgoing.handlers_of(e).is_empty())
        {
            next(
                &mut batch,
                "UPDATE keel_events SET routed = TRUE WHERE NOT routed AND EXISTS \
                 (SELECT 1 FROM keel_deliveries d WHERE d.event_id = keel_events.id) AND id IN (",
            );
            ids(&mut batch);
        }
    }
    match batch.build().execute(&mut *conn).await {
        Ok(_) => Ok(true),
        Err(error) if release && error.to_string().contains("no such savepoint") => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Gives each key its row if it has none, without numbering: the keys of commands that
/// are only serialized, not ordered.
pub(super) async fn add_keys(
    conn: &mut SqliteConnection,
    keys: BTreeSet<&str>,
) -> Result<(), Error> {
    for key in keys {
        sqlx::query(concat!(
            "INSERT INTO keel_keys (key, last_used) VALUES ($1, ",
            now_ms!(),
            ") ON CONFLICT DO NOTHING"
        ))
        .bind(key)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Numbers the messages with an ordered key, per key, on from each key's counter (creating
/// the key's row if need be). SQLite has one writer, so this order is commit order.
pub(super) async fn number(
    conn: &mut SqliteConnection,
    messages: &[(&Envelope, Option<&str>)],
) -> Result<HashMap<EventId, i64>, Error> {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, key) in messages {
        if let Some(key) = key {
            *counts.entry(key).or_default() += 1;
        }
    }
    let mut next: BTreeMap<&str, i64> = BTreeMap::new();
    for (key, count) in counts {
        let last: i64 = sqlx::query_scalar(concat!(
            "INSERT INTO keel_keys (key, next_seq, last_used) VALUES ($1, $2, ",
            now_ms!(),
            ") ON CONFLICT (key) DO UPDATE
             SET next_seq = next_seq + excluded.next_seq, last_used = excluded.last_used
             RETURNING next_seq"
        ))
        .bind(key)
        .bind(count)
        .fetch_one(&mut *conn)
        .await?;
        next.insert(key, last - count + 1);
    }
    let mut seqs = HashMap::new();
    for (e, key) in messages {
        if let Some(seq) = key.and_then(|key| next.get_mut(key)) {
            seqs.insert(e.id, *seq);
            *seq += 1;
        }
    }
    Ok(seqs)
}
