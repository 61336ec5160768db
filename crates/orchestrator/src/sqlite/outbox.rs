//! The outbox write on SQLite.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use keel_domain::{Envelope, EventId};
use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};

use super::{CHUNK, now, now_ms};
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

/// The outbox write: multi-row inserts, chunked under SQLite's parameter limit. Deliveries
/// go to this process's handlers (reserved for its fast path when it has one) and to every
/// other subscription recorded in `keel_subscriptions`. The fast
/// path's lease ends at SQLite's clock plus the lease.
pub(super) async fn write(
    conn: &mut SqliteConnection,
    outgoing: &Outgoing<'_>,
) -> Result<(), Error> {
    let messages: Vec<(&Envelope, Option<&str>)> = outgoing.messages().collect();
    let ordered: Vec<(&Envelope, Option<&str>)> = messages
        .iter()
        .map(|(e, _)| *e)
        .zip(outgoing.ordered_keys())
        .collect();
    let seqs = number(conn, &ordered).await?;
    let unordered: BTreeSet<&str> = messages
        .iter()
        .zip(&ordered)
        .filter_map(|((_, key), (_, ordered))| key.filter(|_| ordered.is_none()))
        .collect();
    add_keys(conn, unordered).await?;
    let seq_of = |e: &Envelope| seqs.get(&e.id).copied();
    for chunk in messages.chunks(CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at, \
             payload, correlation_id, causation_id, routed, ordering_key, key_seq, headers) ",
        );
        let mut failed = None;
        query.push_values(chunk, |mut row, (e, key)| {
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
        query.build().execute(&mut *conn).await?;
    }

    let leased_until = match outgoing.lease {
        Some((_, lease)) => Some(now(conn).await? + millis(lease)),
        None => None,
    };
    let token = outgoing.lease.map(|(token, _)| token.to_string());
    let mut deliveries = Vec::new();
    for (n, (e, key)) in messages.iter().enumerate() {
        // Event deliveries are reserved for this process's fast path (when it has one);
        // command deliveries always go to workers, which honour their ordering keys.
        let leased = n < outgoing.events.len();
        for handler in outgoing.handlers_of(e) {
            deliveries.push((e.id.to_string(), *handler, leased, *key, seq_of(e)));
        }
    }
    for chunk in deliveries.chunks(CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO keel_deliveries (event_id, handler, attempts, leased_until, leased_by, \
             ordering_key, key_seq) ",
        );
        query.push_values(chunk, |mut row, (id, handler, leased, key, seq)| {
            // A delivery reserved for the fast path counts as its first attempt, so that a
            // relay taking it over after a crash counts on from there.
            row.push_bind(id.as_str())
                .push_bind(*handler)
                .push_bind(if leased_until.is_some() && *leased {
                    1
                } else {
                    0
                })
                .push_bind(leased_until.filter(|_| *leased))
                .push_bind(token.as_deref().filter(|_| *leased))
                .push_bind(*key)
                .push_bind(*seq);
        });
        query.build().execute(&mut *conn).await?;
    }

    // The deliveries of every other subscription, whichever process runs it.
    for chunk in messages.chunks(CHUNK) {
        let ids = |query: &mut QueryBuilder<Sqlite>| {
            let mut list = query.separated(", ");
            for (e, _) in chunk {
                list.push_bind(e.id.to_string());
            }
        };
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO keel_deliveries (event_id, handler, ordering_key, key_seq) \
             SELECT e.id, s.handler, e.ordering_key, e.key_seq FROM keel_events e \
             JOIN keel_subscriptions s ON s.message = e.name WHERE e.id IN (",
        );
        ids(&mut query);
        query.push(") ON CONFLICT DO NOTHING");
        let added = query.build().execute(&mut *conn).await?.rows_affected();
        if added > 0
            && chunk
                .iter()
                .any(|(e, _)| outgoing.handlers_of(e).is_empty())
        {
            let mut query = QueryBuilder::<Sqlite>::new(
                "UPDATE keel_events SET routed = TRUE WHERE NOT routed AND EXISTS \
                 (SELECT 1 FROM keel_deliveries d WHERE d.event_id = keel_events.id) AND id IN (",
            );
            ids(&mut query);
            query.push(")");
            query.build().execute(&mut *conn).await?;
        }
    }
    Ok(())
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
