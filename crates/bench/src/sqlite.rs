//! `sqlite`: the `uow` and `delivery` scenarios on SQLite (a file in WAL mode,
//! `synchronous = NORMAL`, as Keel opens it), against raw sqlx on a file opened the same
//! way. SQLite has one writer: the raw baselines use one connection, which serializes
//! writers without busy-waiting (the fastest hand-written arrangement); Keel queues its
//! writers in-process.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use keel::sqlite::{App, Database, Dispatcher};
use keel::{DatabaseOptions, DeliveryOptions, DomainEvent, sqlx};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::Report;
use crate::common::{self, Touched};
use crate::uow::verdict;

const TASKS: u64 = 8;
/// Alternating rounds of the `uow` measure.
const ROUNDS: u64 = 3;

const SCHEMA: &str = "
    DROP TABLE IF EXISTS bench_rows; DROP TABLE IF EXISTS bench_effects;
    DROP TABLE IF EXISTS raw_outbox;
    CREATE TABLE bench_rows (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
    CREATE TABLE bench_effects (seq INTEGER PRIMARY KEY);
    CREATE TABLE raw_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL,
                             done INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX raw_outbox_pending ON raw_outbox (id) WHERE done = 0;
    WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 64)
    INSERT INTO bench_rows SELECT i, 0 FROM g;
    DELETE FROM keel_delivery_errors; DELETE FROM keel_deliveries; DELETE FROM keel_done;
    DELETE FROM keel_events; DELETE FROM keel_keys;";

/// A fresh directory for the two database files.
fn directory() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("keel-bench-sqlite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

async fn keel_db(file: &Path) -> Result<Database, String> {
    let db = DatabaseOptions::new(format!("sqlite:{}", file.display()))
        .max_connections(TASKS as u32 + 2)
        .connect::<sqlx::Sqlite>()
        .await
        .map_err(|e| e.to_string())?;
    db.migrate().await.map_err(|e| e.to_string())?;
    Ok(db)
}

/// The raw pool: one connection, WAL, `synchronous = NORMAL`.
async fn raw_pool(file: &Path) -> Result<sqlx::SqlitePool, String> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite:{}", file.display()))
        .map_err(|e| e.to_string())?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| e.to_string())
}

async fn reset(pool: &sqlx::SqlitePool) -> Result<(), String> {
    sqlx::raw_sql(SCHEMA)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| format!("resetting the SQLite tables: {e}"))
}

async fn count(pool: &sqlx::SqlitePool, sql: &'static str) -> Result<i64, String> {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(n)
}

async fn raw_uow(pool: &sqlx::SqlitePool, ops: u64) -> Result<f64, String> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let pool = pool.clone();
        let n = common::share(ops, TASKS, task);
        tasks.push(tokio::spawn(async move {
            let row = task as i64 + 1;
            for i in 0..n {
                let seq = (task * ops + i) as i64;
                let mut tx = pool.begin().await?;
                sqlx::query("UPDATE bench_rows SET n = n + 1 WHERE id = $1")
                    .bind(row)
                    .execute(&mut *tx)
                    .await?;
                // Keel's two statements on SQLite (`crates/orchestrator/src/sqlite/`, the
                // outbox write), as its query builder writes them for one event with one
                // handler, not leased; the times are SQLite's, from the columns' defaults.
                let event = common::RawEvent::new(row, seq);
                let occurred_at = event
                    .occurred_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                sqlx::query(
                    "INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at, \
                     payload, correlation_id, causation_id, routed, ordering_key) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(event.id.to_string())
                .bind(Touched::NAME)
                .bind(Touched::AGGREGATE_TYPE)
                .bind(row.to_string())
                .bind(occurred_at)
                .bind(event.payload.to_string())
                .bind(event.id.to_string())
                .bind(None::<String>)
                .bind(true)
                .bind(None::<&str>)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO keel_deliveries (event_id, handler, attempts, leased_until, \
                     leased_by, ordering_key) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(event.id.to_string())
                .bind("write_effect")
                .bind(0_i32)
                .bind(None::<i64>)
                .bind(None::<&str>)
                .bind(None::<&str>)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    common::join_all(tasks).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn keel_uow(db: &Database, ops: u64) -> Result<f64, String> {
    let dispatcher = Dispatcher::with_options(
        db.clone(),
        crate::uow::registry(),
        DeliveryOptions::default().fast_path(false),
    );
    crate::uow::keel_round(&dispatcher, ops, 0).await
}

async fn raw_delivery(pool: &sqlx::SqlitePool, events: u64) -> Result<f64, String> {
    let handled = Arc::new(AtomicI64::new(0));
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let (pool, handled) = (pool.clone(), handled.clone());
        let events = events as i64;
        consumers.push(tokio::spawn(async move {
            while handled.load(Ordering::Relaxed) < events {
                let mut tx = pool.begin().await?;
                let claimed: Option<(String,)> = sqlx::query_as(
                    "UPDATE raw_outbox SET done = 1 WHERE id = (
                         SELECT id FROM raw_outbox WHERE done = 0 ORDER BY id LIMIT 1)
                     RETURNING payload",
                )
                .fetch_optional(&mut *tx)
                .await?;
                let Some((payload,)) = claimed else {
                    tx.rollback().await?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let event: Touched =
                    serde_json::from_str(&payload).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                sqlx::query("INSERT INTO bench_effects (seq) VALUES ($1)")
                    .bind(event.seq)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                handled.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let pool = pool.clone();
        let n = common::share(events, TASKS, task);
        tasks.push(tokio::spawn(async move {
            let row = task as i64 + 1;
            for i in 0..n {
                let seq = (task * events + i) as i64;
                let payload = serde_json::to_string(&Touched { row, seq }).unwrap_or_default();
                let mut tx = pool.begin().await?;
                sqlx::query("UPDATE bench_rows SET n = n + 1 WHERE id = $1")
                    .bind(row)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO raw_outbox (payload) VALUES ($1)")
                    .bind(payload)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    common::join_all(tasks).await?;
    common::join_all(consumers).await?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// Keel's delivery on its own pool of `file` (shutting the app down closes the pool).
async fn keel_delivery(file: &Path, events: u64) -> Result<f64, String> {
    let db = keel_db(file).await?;
    let app = App::builder(db, crate::uow::registry())
        .delivery(DeliveryOptions::default().max_in_flight(16))
        .start();
    let started = Instant::now();
    common::produce(app.dispatcher(), events, TASKS, 0).await?;
    let delivered = app
        .wait_until_delivered(Duration::from_secs(300))
        .await
        .map_err(|e| e.to_string())?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    app.shutdown().await.map_err(|e| e.to_string())?;
    if !delivered {
        return Err("Keel on SQLite left deliveries pending".to_owned());
    }
    Ok(rate)
}

/// Every update committed and every effect written once.
async fn check(pool: &sqlx::SqlitePool, events: u64, who: &str) -> Result<(), String> {
    let updates = count(pool, "SELECT sum(n) FROM bench_rows").await?;
    let effects = count(pool, "SELECT count(*) FROM bench_effects").await?;
    if updates != events as i64 || effects != events as i64 {
        return Err(format!(
            "{who}: expected {events} updates and effects, found {updates} and {effects}"
        ));
    }
    Ok(())
}

pub async fn run(events: u64) -> Result<Report, String> {
    let dir = directory()?;
    let result = measure(&dir, events).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(dir: &Path, events: u64) -> Result<Report, String> {
    let (keel_file, raw_file) = (dir.join("keel.db"), dir.join("raw.db"));
    let db = keel_db(&keel_file).await?;
    // The raw file gets the same outbox tables; only raw sqlx touches it afterwards.
    keel_db(&raw_file)
        .await?
        .close()
        .await
        .map_err(|e| e.to_string())?;
    let raw = raw_pool(&raw_file).await?;
    // Keel's file, read and reset through a raw pool of its own.
    let keel_raw = raw_pool(&keel_file).await?;

    // Alternating rounds, so that drift (the WAL's growth, the machine) hits both alike.
    let per_round = events / ROUNDS;
    let (mut raw_uow_s, mut keel_uow_s) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        reset(&raw).await?;
        raw_uow_s += raw_uow(&raw, per_round).await?;
        reset(&keel_raw).await?;
        keel_uow_s += keel_uow(&db, per_round).await?;
        let kept = count(&keel_raw, "SELECT count(*) FROM keel_deliveries").await?;
        if kept != per_round as i64 {
            return Err(format!(
                "Keel wrote {kept} deliveries, expected {per_round}"
            ));
        }
    }

    // Delivery in alternating rounds too: a single run of each moved by half between runs
    // on a shared machine (the raw pipeline measured 2,197 to 4,424 events/s).
    let (mut raw_delivery_s, mut keel_delivery_s) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        reset(&raw).await?;
        raw_delivery_s += per_round as f64 / raw_delivery(&raw, per_round).await?;
        check(&raw, per_round, "raw").await?;
        reset(&keel_raw).await?;
        keel_delivery_s += per_round as f64 / keel_delivery(&keel_file, per_round).await?;
        check(&keel_raw, per_round, "Keel").await?;
    }
    db.close().await.map_err(|e| e.to_string())?;

    let ops = (per_round * ROUNDS) as f64;
    let (keel_us, raw_us) = (keel_uow_s / ops * 1e6, raw_uow_s / ops * 1e6);
    let (keel_rate, raw_rate) = (ops / keel_delivery_s, ops / raw_delivery_s);
    common::heading(&format!(
        "sqlite: uow and delivery ({} ops or events each, in {ROUNDS} alternating rounds), {TASKS} tasks, SQLite (WAL)",
        per_round * ROUNDS
    ));
    common::row("uow: raw sqlx (one connection)", raw_us, "µs/op", None);
    common::row(
        "uow: Keel unit of work",
        keel_us,
        "µs/op",
        Some((keel_us / raw_us, "raw")),
    );
    common::row(
        "delivery: raw sqlx pipeline (the ceiling)",
        raw_rate,
        "events/s",
        None,
    );
    common::row(
        "delivery: Keel (fast path + relay)",
        keel_rate,
        "events/s",
        Some((keel_rate / raw_rate, "raw")),
    );
    println!(
        "  goals: uow ratio ≤ 1.05 {}; delivery vs_raw ≥ 0.9 {}",
        verdict(keel_us / raw_us <= 1.05),
        verdict(keel_rate / raw_rate >= 0.9)
    );
    let mut report = Report::new("sqlite");
    report.set("uow_ratio", keel_us / raw_us);
    report.set("uow_keel_us_per_op", keel_us);
    report.set("uow_raw_us_per_op", raw_us);
    report.set("delivery_events_per_s", keel_rate);
    report.set("delivery_raw_events_per_s", raw_rate);
    report.set("delivery_vs_raw", keel_rate / raw_rate);
    Ok(report)
}
