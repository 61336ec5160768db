//! What the scenarios share: the event they record, the tables they write, the raw
//! pools of the baselines, and the way figures are printed.

use std::time::{Duration, Instant};

use keel::postgres::Database;
use keel::{Backend, DatabaseOptions, Dispatcher, DomainEvent, Error, HandlerContext, Tx, sqlx};
use serde::{Deserialize, Serialize};

/// The event every scenario records: row `row` was touched, the `seq`-th time overall.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Touched {
    pub row: i64,
    pub seq: i64,
}

impl DomainEvent for Touched {
    const NAME: &'static str = "bench.touched.v1";
    const AGGREGATE_TYPE: &'static str = "BenchRow";
    fn aggregate_id(&self) -> String {
        self.row.to_string()
    }
}

/// What a hand-written outbox computes per event before writing it, as Keel does in
/// `Envelope::wrap`: a time-ordered id (also the correlation id), a timestamp, the JSON
/// value of the event. Every other time (`created_at`, `next_attempt_at`, `updated_at`) is
/// the database's, from the columns' defaults, as Keel writes them.
pub struct RawEvent {
    pub id: uuid::Uuid,
    pub occurred_at: time::OffsetDateTime,
    pub payload: serde_json::Value,
}

impl RawEvent {
    pub fn new(row: i64, seq: i64) -> Self {
        RawEvent {
            id: uuid::Uuid::now_v7(),
            occurred_at: time::OffsetDateTime::now_utc(),
            payload: serde_json::to_value(Touched { row, seq }).unwrap_or_default(),
        }
    }
}

/// The handler of the `delivery` scenarios: one row written in its unit of work (which
/// also marks the delivery done). Generic: `sqlite` runs it too.
pub async fn write_effect<B: Backend>(
    event: &Touched,
    ctx: &mut HandlerContext<B>,
) -> Result<(), Error>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    B::Arguments: sqlx::IntoArguments<B>,
    i64: sqlx::Type<B> + for<'q> sqlx::Encode<'q, B>,
{
    let seq = event.seq;
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO bench_effects (seq) VALUES ($1)")
            .bind(seq)
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

/// The producers' step: row `row` is touched, and its event recorded.
pub async fn touch<B: Backend>(tx: &mut Tx<'_, B>, row: i64, seq: i64) -> Result<(), Error>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    B::Arguments: sqlx::IntoArguments<B>,
    i64: sqlx::Type<B> + for<'q> sqlx::Encode<'q, B>,
{
    sqlx::query("UPDATE bench_rows SET n = n + 1 WHERE id = $1")
        .bind(row)
        .execute(tx.conn())
        .await?;
    tx.record(Touched { row, seq })?;
    Ok(())
}

/// Keel's producers: `tasks` tasks run `ops` units of work in all, each updating its
/// task's row and recording one event (sequence numbers from `first_seq`).
pub async fn produce<B: Backend>(
    dispatcher: &Dispatcher<B>,
    ops: u64,
    tasks: u64,
    first_seq: i64,
) -> Result<(), String>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    B::Arguments: sqlx::IntoArguments<B>,
    i64: sqlx::Type<B> + for<'q> sqlx::Encode<'q, B>,
{
    let mut handles = Vec::new();
    for task in 0..tasks {
        let dispatcher = dispatcher.clone();
        let n = share(ops, tasks, task);
        handles.push(tokio::spawn(async move {
            let mut session = dispatcher.session();
            let row = task as i64 % 64 + 1;
            for i in 0..n {
                let seq = first_seq + (task * ops + i) as i64;
                session
                    .unit_of_work(async |tx| touch(tx, row, seq).await)
                    .await?;
            }
            Ok::<_, Error>(())
        }));
    }
    join_all(handles).await.map(|_| ())
}

/// The tables of the scenarios, created afresh; the outbox emptied. The hand-written
/// queues keep their payloads as Keel does on PostgreSQL, in `jsonb`.
pub const SCHEMA: &str = "
    DROP TABLE IF EXISTS bench_rows, bench_effects, raw_outbox, raw_queue;
    CREATE TABLE bench_rows (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);
    CREATE TABLE bench_effects (seq BIGINT PRIMARY KEY);
    CREATE TABLE raw_outbox (id BIGSERIAL PRIMARY KEY, payload JSONB NOT NULL,
                             done BOOLEAN NOT NULL DEFAULT FALSE);
    CREATE INDEX raw_outbox_pending ON raw_outbox (id) WHERE NOT done;
    CREATE TABLE raw_queue (id BIGSERIAL PRIMARY KEY, payload JSONB NOT NULL);
    INSERT INTO bench_rows SELECT g, 0 FROM generate_series(1, 64) g;
    TRUNCATE keel_delivery_errors, keel_deliveries, keel_done, keel_events, keel_keys;";

/// Keel's database for a scenario, migrated, with the scenario tables reset.
pub async fn keel_database(url: &str, connections: u32) -> Result<Database, String> {
    let db = DatabaseOptions::new(url)
        .max_connections(connections)
        .connect::<sqlx::Postgres>()
        .await
        .map_err(|e| e.to_string())?;
    db.migrate().await.map_err(|e| e.to_string())?;
    Ok(db)
}

/// A raw sqlx PostgreSQL pool (the baselines use no Keel code), with sqlx's defaults, as
/// Keel's own pool.
pub async fn raw_pool(url: &str, connections: u32) -> Result<sqlx::PgPool, String> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await
        .map_err(|e| e.to_string())
}

/// Recreates the scenario tables and empties the outbox, then lets PostgreSQL settle
/// (checkpoint, statistics) so that each measured phase starts from the same state.
pub async fn reset(pool: &sqlx::PgPool) -> Result<(), String> {
    sqlx::raw_sql(SCHEMA)
        .execute(pool)
        .await
        .map_err(|e| format!("resetting the tables: {e}"))?;
    settle(pool).await
}

/// Lets PostgreSQL settle: dead rows vacuumed, statistics fresh, dirty pages written
/// (`VACUUM ANALYZE`, `CHECKPOINT`), so that a measured phase does not pay for the one
/// before it (an autovacuum of the last phase's deletes, a checkpoint in the middle).
pub async fn settle(pool: &sqlx::PgPool) -> Result<(), String> {
    for statement in ["VACUUM ANALYZE", "CHECKPOINT"] {
        sqlx::raw_sql(statement)
            .execute(pool)
            .await
            .map_err(|e| format!("{statement}: {e}"))?;
    }
    Ok(())
}

/// A count from a one-value query.
pub async fn count(pool: &sqlx::PgPool, sql: &'static str) -> Result<i64, String> {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(n)
}

/// Waits until `sql` counts `expected`, polling; fails after `timeout`.
pub async fn wait_for_count(
    pool: &sqlx::PgPool,
    sql: &'static str,
    expected: i64,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = count(pool, sql).await?;
        if n >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {} s: `{sql}` = {n}, expected {expected}",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Splits `total` operations among `tasks`: the share of task `i`.
pub fn share(total: u64, tasks: u64, i: u64) -> u64 {
    total / tasks + u64::from(i < total % tasks)
}

/// Joins spawned tasks, turning panics and errors into one message.
pub async fn join_all<T, E: std::fmt::Display>(
    tasks: Vec<tokio::task::JoinHandle<Result<T, E>>>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(
            task.await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

/// The value at percentile `p` (0–100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The width of the labels of result tables (the longest, a Graphile Worker peer's).
const LABEL_WIDTH: usize = 66;

/// One line of a result table: a label, a figure with its unit, and a ratio.
pub fn row(label: &str, value: f64, unit: &str, ratio: Option<(f64, &str)>) {
    let ratio = ratio
        .map(|(r, of)| format!("{r:>7.2}× {of}"))
        .unwrap_or_default();
    println!("  {label:<LABEL_WIDTH$} {value:>12.1} {unit:<9} {ratio}");
}

/// The line of a result table for a figure that could not be measured.
pub fn not_measured(label: &str) {
    println!("  {label:<LABEL_WIDTH$} not measured (see the warning above)");
}

/// Prints the heading of a scenario's table.
pub fn heading(title: &str) {
    println!("\n{title}");
    println!("  {}", "-".repeat(title.chars().count().max(40)));
}
