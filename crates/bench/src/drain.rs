//! `drain`: a backlog of pending deliveries (as after a crash) drained by one relay, whose
//! handler does no database work: the figure is the relay's own cost (claim, load the
//! events, run, mark done).
//!
//! The limit, measured in the same run: raw sqlx dequeuing the same number of rows from a
//! plain queue table, 100 per transaction with `FOR UPDATE SKIP LOCKED`, 8 connections —
//! the batched dequeue rate of this server.
//!
//! The peers: Graphile Worker draining as many jobs, pending beforehand, with a task that
//! does nothing, first with its defaults, then batched (see `peers.rs`).

use std::time::{Duration, Instant};

use keel::postgres::{App, Handler, HandlerContext, Registry};
use keel::{DeliveryOptions, Error, sqlx};

use crate::Report;
use crate::common::{self, Touched};
use crate::peers;
use crate::uow::verdict;

const LIMIT_TASKS: u64 = 8;

/// The peers, with the least ratio Keel (default options) aims for against each.
const PEERS: &[peers::Rival] = &[
    (&peers::GRAPHILE, None),
    (&peers::GRAPHILE_BATCHED, Some(1.5)),
];

async fn note(_event: &Touched, _ctx: &mut HandlerContext) -> Result<(), Error> {
    Ok(())
}

/// `n` events as Keel would have written them: time-ordered ids (UUIDv7, made by the
/// harness: PostgreSQL has `uuidv7()` only from version 18), `jsonb` payloads, times in the
/// past in the order written.
const SEED: &str = "
    INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at, payload,
                             correlation_id, causation_id, routed, created_at)
    SELECT u, 'bench.touched.v1', 'BenchRow', '1', t, jsonb_build_object('row', 1, 'seq', g),
           u, NULL, TRUE, t
    FROM (SELECT u, g, now() - interval '1 hour' + g * interval '1 microsecond' AS t
          FROM UNNEST($1::uuid[]) WITH ORDINALITY AS s (u, g)) s";
/// Their pending deliveries to the `note` handler, unleased, due since they were written.
const SEED_DELIVERIES: &str = "
    INSERT INTO keel_deliveries (event_id, handler, status, attempts, next_attempt_at,
                                 updated_at)
    SELECT id, 'note', 'pending', 0, created_at, created_at FROM keel_events";

async fn seed(pool: &sqlx::PgPool, n: u64) -> Result<(), String> {
    common::reset(pool).await?;
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
    sqlx::query(SEED)
        .bind(ids)
        .execute(pool)
        .await
        .map_err(|e| format!("seeding events: {e}"))?;
    sqlx::query(SEED_DELIVERIES)
        .execute(pool)
        .await
        .map_err(|e| format!("seeding deliveries: {e}"))?;
    sqlx::query(
        "INSERT INTO raw_queue (payload) SELECT jsonb_build_object('row', 1, 'seq', g)
         FROM generate_series(1, $1) g",
    )
    .bind(n as i64)
    .execute(pool)
    .await
    .map_err(|e| format!("seeding the raw queue: {e}"))?;
    for statement in ["VACUUM ANALYZE", "CHECKPOINT"] {
        sqlx::raw_sql(statement)
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The server's batched dequeue rate, rows per second.
async fn limit(pool: &sqlx::PgPool, n: u64) -> Result<f64, String> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..LIMIT_TASKS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
                    "DELETE FROM raw_queue WHERE id IN (
                         SELECT id FROM raw_queue ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
                     RETURNING payload",
                )
                .fetch_all(&pool)
                .await?;
                if rows.is_empty() {
                    return Ok::<_, sqlx::Error>(());
                }
            }
        }));
    }
    common::join_all(tasks).await?;
    let left = common::count(pool, "SELECT count(*) FROM raw_queue").await?;
    if left != 0 {
        return Err(format!("the raw queue kept {left} rows"));
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Keel's relay draining the backlog, deliveries per second.
async fn keel(url: &str, n: u64, options: DeliveryOptions) -> Result<f64, String> {
    let db = common::keel_database(url, 8).await?;
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<Touched, _>("note", note))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let app = App::builder(db, registry).delivery(options).start();
    let delivered = app
        .wait_until_delivered(Duration::from_secs(300))
        .await
        .map_err(|e| e.to_string())?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    app.shutdown().await.map_err(|e| e.to_string())?;
    if !delivered {
        return Err("the relay left deliveries pending after 300 s".to_owned());
    }
    Ok(rate)
}

pub async fn run(url: &str, n: u64, with_peers: bool) -> Result<Report, String> {
    let pool = common::raw_pool(url, LIMIT_TASKS as u32 + 2).await?;
    seed(&pool, n).await?;
    let limit_rate = limit(&pool, n).await?;
    let defaults = DeliveryOptions::default();
    let default_rate = keel(url, n, defaults.clone()).await?;
    let done = common::count(&pool, "SELECT count(*) FROM keel_done").await?;
    if done != n as i64 {
        return Err(format!("{done} deliveries done, expected {n}"));
    }
    seed(&pool, n).await?;
    let wide = defaults.batch_size(500).max_in_flight(1_000);
    let wide_rate = keel(url, n, wide).await?;
    let measured = if with_peers {
        peers::measure(url, PEERS, peers::Job::Drain { jobs: n }).await
    } else {
        Vec::new()
    };

    common::heading(&format!(
        "drain: {n} pending deliveries, a handler with no database work, one relay, PostgreSQL"
    ));
    common::row(
        "limit: raw DELETE … SKIP LOCKED, 100 rows/tx, 8 conns",
        limit_rate,
        "rows/s",
        None,
    );
    common::row(
        "Keel, defaults: 4 loops × 250, 64 running",
        default_rate,
        "deliv./s",
        Some((default_rate / limit_rate, "limit")),
    );
    common::row(
        "Keel, 4 loops × 500, 1,000 running",
        wide_rate,
        "deliv./s",
        Some((wide_rate / limit_rate, "limit")),
    );
    peers::rows(&measured, default_rate, "jobs/s");

    let mut report = Report::new("drain");
    report.set("deliveries_per_s", default_rate);
    report.set("wide_deliveries_per_s", wide_rate);
    report.set("limit_rows_per_s", limit_rate);
    report.set("vs_limit", default_rate / limit_rate);
    let mut goals = vec![format!(
        "≥ 100,000/s and ≥ 0.5× the limit with default options {}",
        verdict(default_rate >= 100_000.0 && default_rate >= 0.5 * limit_rate)
    )];
    peers::record(&measured, default_rate, &mut report, &mut goals);
    println!("  goals: {}", goals.join("; "));
    Ok(report)
}
