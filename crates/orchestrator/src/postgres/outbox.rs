//! The outbox write on PostgreSQL.

use sqlx::postgres::PgConnection;

use super::transaction::{is_replaced, isolation_level};
use crate::Error;
use crate::outbox::Outgoing;

/// The unit of work's check ending an outbox write: its marker (`$marker`) and isolation
/// level (`$isolation`) still set, unless the marker is `NULL` (a write outside a unit of
/// work). See [`write`].
macro_rules! check {
    ($marker:literal, $isolation:literal) => {
        concat!(
            "SELECT CASE WHEN ",
            $marker,
            "::text IS NULL
                       OR (current_setting('keel.unit_of_work', true) = ",
            $marker,
            "
                           AND current_setting('transaction_isolation') = ",
            $isolation,
            ")
                THEN 1 ELSE current_setting('keel.transaction_replaced')::int END"
        )
    };
}

/// The events and deliveries of an outbox write, each row's key number given by `$seq`
/// (an SQL expression of the message id `i`), then the unit of work's check.
macro_rules! outbox_rows {
    ($seq:literal) => {
        concat!(
            "e AS (
             INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at,
                 payload, correlation_id, causation_id, routed, ordering_key, key_seq, headers)
             SELECT t.i, n, at, ai, oa, p, c, ca,
                    r OR EXISTS (SELECT 1 FROM keel_subscriptions s WHERE s.message = n), k, ",
            $seq,
            ", hd
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                 $6::jsonb[], $7::uuid[], $8::uuid[], $9::bool[], $10::text[], $19::jsonb[])
                 AS t (i, n, at, ai, oa, p, c, ca, r, k, hd)),
         d AS (
             INSERT INTO keel_deliveries (event_id, handler, attempts, next_attempt_at,
                 leased_until, leased_by, ordering_key, key_seq)
             SELECT t.i, h, CASE WHEN l THEN 1 ELSE 0 END,
                    CASE WHEN l THEN u.until ELSE now() END, CASE WHEN l THEN u.until END,
                    CASE WHEN l THEN $14::uuid END, k, ",
            $seq,
            "
             FROM UNNEST($11::uuid[], $12::text[], $15::bool[], $16::text[]) AS t (i, h, l, k),
                  (SELECT clock_timestamp() + $13 * interval '1 millisecond') AS u (until)
             UNION ALL
             SELECT t.i, s.handler, 0, now(), NULL, NULL, t.k, ",
            $seq,
            "
             FROM UNNEST($1::uuid[], $2::text[], $10::text[]) AS t (i, n, k)
             JOIN keel_subscriptions s ON s.message = t.n
             WHERE NOT EXISTS (SELECT 1 FROM UNNEST($11::uuid[], $12::text[]) AS x (i, h)
                               WHERE x.i = t.i AND x.h = s.handler))
         ",
            check!("$17", "$18")
        )
    };
}

/// The outbox write of messages without ordering keys (events, unkeyed commands).
const UNKEYED: &str = concat!("WITH ", outbox_rows!("NULL::bigint"));

/// The outbox write of one message without an ordering key, the common case (a unit of
/// work that records one event): the rows of [`UNKEYED`], the message's columns bound one
/// by one. The array form costs more to run than to write the rows: each array is
/// received, then unnested by a function scan that is set up and filled at every execution
/// (see `docs/benchmarks.md`). `$11`: the message's handlers in this process, `$12`:
/// whether their deliveries are reserved for its fast path, which makes them due when the
/// lease ends.
const ONE: &str = concat!(
    "WITH e AS (
         INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at,
             payload, correlation_id, causation_id, routed, headers)
         SELECT $1::uuid, $2::text, $3::text, $4::text, $5::timestamptz, $6::jsonb, $7::uuid,
                $8::uuid,
                $9 OR EXISTS (SELECT 1 FROM keel_subscriptions s WHERE s.message = $2::text),
                $10::jsonb),
     d AS (
         INSERT INTO keel_deliveries (event_id, handler, attempts, next_attempt_at,
             leased_until, leased_by)
         SELECT $1::uuid, t.h, CASE WHEN $12 THEN 1 ELSE 0 END,
                CASE WHEN $12 THEN u.until ELSE now() END, CASE WHEN $12 THEN u.until END,
                CASE WHEN $12 THEN $14::uuid END
         FROM UNNEST($11::text[]) AS t (h),
              (SELECT clock_timestamp() + $13 * interval '1 millisecond') AS u (until)
         UNION ALL
         SELECT $1::uuid, s.handler, 0, now(), NULL, NULL
         FROM keel_subscriptions s
         WHERE s.message = $2::text AND s.handler <> ALL ($11::text[]))
     ",
    check!("$15", "$16")
);

/// The outbox write with ordering keys: each ordered key's row is upserted (and so locked
/// until the transaction ends) and numbers the key's commands (`$20`: each message's key
/// when ordered); unordered keys get their row without a lock.
const KEYED: &str = concat!(
    "WITH ku AS (
         INSERT INTO keel_keys (key, next_seq)
         SELECT k, count(*) FROM UNNEST($20::text[]) AS t (k) WHERE k IS NOT NULL GROUP BY k
         ON CONFLICT (key) DO UPDATE
         SET next_seq = keel_keys.next_seq + EXCLUDED.next_seq, last_used = now()
         RETURNING key, next_seq),
     kn AS (
         INSERT INTO keel_keys (key)
         SELECT DISTINCT k FROM UNNEST($10::text[]) AS t (k)
         WHERE k IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM UNNEST($20::text[]) AS o (k) WHERE o.k = t.k)
         ON CONFLICT DO NOTHING),
     q AS (
         SELECT t.i, ku.next_seq - count(*) OVER (PARTITION BY t.k)
                     + row_number() OVER (PARTITION BY t.k ORDER BY t.o) AS seq
         FROM UNNEST($1::uuid[], $20::text[]) WITH ORDINALITY AS t (i, k, o)
         JOIN ku ON ku.key = t.k),
     ",
    outbox_rows!("(SELECT q.seq FROM q WHERE q.i = t.i)")
);

/// The outbox write: events, deliveries and ordering keys in one statement, whatever the
/// number of rows. The row of each ordered key ([`Sent::ordered`]) is upserted, which locks
/// it until the transaction ends, and numbers the key's commands from its counter: per-key
/// order is commit order. Unordered keys get their row without a lock.
///
/// Deliveries go to this process's handlers (reserved for its fast path when it has one)
/// and to every other subscription recorded in `keel_subscriptions`; a reserved delivery is
/// due when its lease ends, so relays' claims do not read it while this process runs it.
/// One message without an ordering key, the common case, is written by [`ONE`]; more, each
/// column as one array (`UNNEST`): either way the statement's text never changes and stays
/// prepared. Inside a unit of work its last part checks that the transaction still carries
/// the unit of work's marker and isolation level, and fails the whole statement otherwise
/// (after a `COMMIT` run by hand, it would commit on its own): when it succeeds, the
/// `COMMIT` that follows needs no check of its own.
///
/// [`Sent::ordered`]: crate::outbox::Sent::ordered
pub(super) async fn write(conn: &mut PgConnection, outgoing: &Outgoing<'_>) -> Result<bool, Error> {
    let mut messages = outgoing.messages();
    if let (Some((message, None)), None) = (messages.next(), messages.next()) {
        return write_one(conn, outgoing, message).await;
    }
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut aggregate_types = Vec::new();
    let mut aggregate_ids = Vec::new();
    let mut occurred = Vec::new();
    let mut payloads = Vec::new();
    let mut correlations = Vec::new();
    let mut causations = Vec::new();
    let mut routed = Vec::new();
    let mut keys = Vec::new();
    let mut headers = Vec::new();
    let (mut d_ids, mut d_handlers, mut d_leased, mut d_keys) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, (e, key)) in outgoing.messages().enumerate() {
        let handlers = outgoing.handlers_of(e);
        ids.push(*e.id.as_uuid());
        names.push(e.name.as_str());
        aggregate_types.push(e.aggregate_type.as_str());
        aggregate_ids.push(e.aggregate_id.as_str());
        occurred.push(e.occurred_at);
        payloads.push(&e.payload);
        correlations.push(e.correlation_id);
        causations.push(e.causation_id.map(|c| *c.as_uuid()));
        routed.push(!handlers.is_empty());
        keys.push(key);
        headers.push(stored_headers(e));
        let leased = outgoing.reserved(n);
        for handler in handlers {
            d_ids.push(*e.id.as_uuid());
            d_handlers.push(*handler);
            d_leased.push(leased);
            d_keys.push(key);
        }
    }
    let (token, lease_ms, marker, isolation) = shared(outgoing);
    let keyed = keys.iter().any(Option::is_some);
    let sql = if keyed { KEYED } else { UNKEYED };
    let query = sqlx::query(sql)
        .bind(ids)
        .bind(names)
        .bind(aggregate_types)
        .bind(aggregate_ids)
        .bind(occurred)
        .bind(payloads)
        .bind(correlations)
        .bind(causations)
        .bind(routed)
        .bind(keys)
        .bind(d_ids)
        .bind(d_handlers)
        .bind(lease_ms)
        .bind(token)
        .bind(d_leased)
        .bind(d_keys)
        .bind(marker)
        .bind(isolation)
        .bind(headers);
    let query = if keyed {
        query.bind(outgoing.ordered_keys().collect::<Vec<_>>())
    } else {
        query
    };
    checked(query.execute(conn).await)
}

/// [`write`] of a single message without an ordering key ([`ONE`]).
async fn write_one(
    conn: &mut PgConnection,
    outgoing: &Outgoing<'_>,
    e: &keel_domain::Envelope,
) -> Result<bool, Error> {
    let handlers = outgoing.handlers_of(e);
    let reserved = outgoing.reserved(0);
    let (token, lease_ms, marker, isolation) = shared(outgoing);
    let query = sqlx::query(ONE)
        .bind(e.id.as_uuid())
        .bind(e.name.as_str())
        .bind(e.aggregate_type.as_str())
        .bind(e.aggregate_id.as_str())
        .bind(e.occurred_at)
        .bind(&e.payload)
        .bind(e.correlation_id)
        .bind(e.causation_id.map(|c| *c.as_uuid()))
        .bind(!handlers.is_empty())
        .bind(stored_headers(e))
        .bind(handlers)
        .bind(reserved)
        .bind(lease_ms)
        .bind(token)
        .bind(marker)
        .bind(isolation);
    checked(query.execute(conn).await)
}

/// What both forms of the write bind alike: the fast path's lease (its token, and its
/// length in milliseconds) and the unit of work's marker and isolation level, for its
/// check (`None` outside a unit of work).
fn shared(
    outgoing: &Outgoing<'_>,
) -> (
    Option<uuid::Uuid>,
    i64,
    Option<String>,
    Option<&'static str>,
) {
    let (token, lease_ms) = match outgoing.lease {
        Some((token, lease)) => (Some(token), lease.as_millis() as i64),
        None => (None, 0),
    };
    let marker = outgoing.marker.map(|(marker, _)| marker.to_string());
    let isolation = outgoing
        .marker
        .map(|(_, isolation)| isolation_level(isolation));
    (token, lease_ms, marker, isolation)
}

/// An outbox write's outcome: `false` when the unit of work's check failed.
fn checked(written: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> Result<bool, Error> {
    match written {
        Ok(_) => Ok(true),
        Err(error) if is_replaced(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// An envelope's headers as stored: `NULL` when it has none, which is most events.
pub(super) fn stored_headers(
    e: &keel_domain::Envelope,
) -> Option<sqlx::types::Json<&std::collections::BTreeMap<String, String>>> {
    (!e.headers.is_empty()).then_some(sqlx::types::Json(&e.headers))
}
