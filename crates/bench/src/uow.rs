//! `uow`: the cost of a unit of work against the same statements written by hand.
//!
//! Each operation updates one row and records one event. Keel runs it as a unit of work
//! whose event goes to the outbox (one `keel_events` row and one `keel_deliveries` row for
//! its handler, written by one statement before `COMMIT`); the baseline is raw sqlx doing
//! exactly that: `BEGIN`, the `UPDATE`, the same outbox statement, `COMMIT`, with the same
//! id, timestamp and JSON work. Nothing is delivered during the measure (the handler is
//! known, so the rows are routed, but the fast path and the relay are off). The two
//! alternate in rounds so that drift on a shared machine hits both alike.

use std::time::Instant;

use keel::{Backend, DeliveryOptions, Dispatcher, DomainEvent, Handler, Registry, sqlx};

use crate::Report;
use crate::common::{self, Touched};

/// Tasks running operations at once.
const TASKS: u64 = 8;
/// Rounds of each contender.
const ROUNDS: u64 = 3;

/// The outbox statement Keel runs on PostgreSQL for a unit of work that records one
/// message without an ordering key (`ONE` in `crates/orchestrator/src/postgres/outbox.rs`):
/// the event and its deliveries (to this process's handlers and to every recorded
/// subscription) in one statement. Verbatim but for Keel's own guard (the final check of
/// the unit of work's marker, a setting made at `BEGIN`), which a hand-written outbox has
/// no use for: the marker is part of what the ratio measures.
const RAW_OUTBOX: &str = "WITH e AS (
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
     SELECT 1";

/// The handler of `Touched` (on either backend: `sqlite` uses it too).
pub fn registry<B: Backend>() -> Registry<B>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    B::Arguments: sqlx::IntoArguments<B>,
    i64: sqlx::Type<B> + for<'q> sqlx::Encode<'q, B>,
{
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<Touched, _>(
            "write_effect",
            common::write_effect::<B>,
        ))
        .expect("one handler");
    registry
}

/// Keel: `ops` units of work on `TASKS` tasks; returns the seconds taken.
pub async fn keel_round<B: Backend>(
    dispatcher: &Dispatcher<B>,
    ops: u64,
    first_seq: i64,
) -> Result<f64, String>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    B::Arguments: sqlx::IntoArguments<B>,
    i64: sqlx::Type<B> + for<'q> sqlx::Encode<'q, B>,
{
    let started = Instant::now();
    common::produce(dispatcher, ops, TASKS, first_seq).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// The baseline: the same statements through raw sqlx; returns the seconds taken.
pub async fn raw_round(pool: &sqlx::PgPool, ops: u64, first_seq: i64) -> Result<f64, String> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let pool = pool.clone();
        let n = common::share(ops, TASKS, task);
        tasks.push(tokio::spawn(async move {
            let row = task as i64 % 64 + 1;
            for i in 0..n {
                let seq = first_seq + (task * ops + i) as i64;
                let mut tx = pool.begin().await?;
                sqlx::query("UPDATE bench_rows SET n = n + 1 WHERE id = $1")
                    .bind(row)
                    .execute(&mut *tx)
                    .await?;
                raw_outbox_insert(&mut tx, row, seq).await?;
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    common::join_all(tasks).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// What a hand-written outbox does per event: an id, a timestamp, the JSON value, and
/// Keel's one statement writing the event and its delivery (one handler, not leased: the
/// fast path is off, as in Keel's rounds), bound as Keel binds it.
async fn raw_outbox_insert(
    tx: &mut sqlx::PgConnection,
    row: i64,
    seq: i64,
) -> Result<(), sqlx::Error> {
    let event = common::RawEvent::new(row, seq);
    let aggregate_id = row.to_string();
    sqlx::query(RAW_OUTBOX)
        .bind(event.id)
        .bind(Touched::NAME)
        .bind(Touched::AGGREGATE_TYPE)
        .bind(aggregate_id.as_str())
        .bind(event.occurred_at)
        .bind(&event.payload)
        .bind(event.id)
        .bind(None::<uuid::Uuid>)
        .bind(true)
        .bind(None::<sqlx::types::Json<()>>)
        .bind(vec!["write_effect"])
        .bind(false)
        .bind(0_i64)
        .bind(None::<uuid::Uuid>)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn run(url: &str, events: u64) -> Result<Report, String> {
    let db = common::keel_database(url, TASKS as u32 + 2).await?;
    let pool = common::raw_pool(url, TASKS as u32 + 2).await?;
    let dispatcher =
        Dispatcher::with_options(db, registry(), DeliveryOptions::default().fast_path(false));
    let per_round = events / ROUNDS;
    let (mut keel_s, mut raw_s) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let first = (round * per_round) as i64;
        common::reset(&pool).await?;
        raw_s += raw_round(&pool, per_round, first).await?;
        let written = common::count(&pool, "SELECT count(*) FROM keel_deliveries").await?;
        common::reset(&pool).await?;
        keel_s += keel_round(&dispatcher, per_round, first).await?;
        let kept = common::count(&pool, "SELECT count(*) FROM keel_deliveries").await?;
        if written != per_round as i64 || kept != per_round as i64 {
            return Err(format!(
                "expected {per_round} deliveries per round, raw wrote {written}, Keel {kept}"
            ));
        }
    }
    let ops = (per_round * ROUNDS) as f64;
    let (keel_us, raw_us) = (keel_s / ops * 1e6, raw_s / ops * 1e6);
    let ratio = keel_us / raw_us;

    common::heading(&format!(
        "uow: UPDATE one row + record one event, {TASKS} tasks, {} ops in {ROUNDS} alternating rounds, PostgreSQL",
        per_round * ROUNDS
    ));
    common::row(
        "raw sqlx (same statements, same outbox rows)",
        raw_us,
        "µs/op",
        None,
    );
    common::row("Keel unit of work", keel_us, "µs/op", Some((ratio, "raw")));
    common::row("raw sqlx", ops / raw_s, "ops/s", None);
    common::row("Keel", ops / keel_s, "ops/s", None);
    println!("  goal: ratio ≤ 1.02 → {}", verdict(ratio <= 1.02));

    let mut report = Report::new("uow");
    report.set("ratio", ratio);
    report.set("keel_us_per_op", keel_us);
    report.set("raw_us_per_op", raw_us);
    report.set("keel_ops_per_s", ops / keel_s);
    report.set("raw_ops_per_s", ops / raw_s);
    Ok(report)
}

/// "met" or "NOT met".
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}
