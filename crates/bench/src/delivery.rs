//! `delivery`: events per second from commit to handler effect, end to end.
//!
//! Producers run units of work that update one row and record one event; the event's
//! handler writes one row. The clock stops when every effect is written (and, for Keel,
//! every delivery is marked done, which its handler's unit of work does with the effect).
//!
//! - Keel: an `App` with its defaults (fast path and relay), the handler in
//!   `common::write_effect`.
//! - raw: the ceiling, a hand-written pipeline with no framework: each producer commits
//!   its `UPDATE` and an outbox row (its payload in `jsonb`, as Keel keeps it); consumers
//!   claim one row at a time with `FOR UPDATE SKIP LOCKED`, write the effect, delete the
//!   row (the cheapest "done"), commit. The same two transactions per event.
//! - raw, grouped: the same producers; two consumers each take up to 32 rows (Keel's
//!   default group) in one statement, write each effect with its own statement (as a group
//!   of handlers does), commit once, and pause 5 ms after a claim that came back short,
//!   so that groups are full. Beside the same raw producers alone, it shows how much of
//!   its producers' rate a hand-written grouped delivery keeps on this machine: the
//!   yardstick for Keel's share of its own producers' rate.
//! - producers only: the yardstick of the target, Keel's producers running the same units
//!   of work with the handler registered and its subscription recorded (each commit writes
//!   its delivery row and looks the subscriptions up, as in the Keel run) but nothing
//!   delivering them: no fast path, no relay. The clock stops when the last producer
//!   returns.
//! - sqlxmq, apalis and Graphile Worker (with its defaults, then batched): the same job
//!   through those libraries (see `peers.rs`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use keel::postgres::App;
use keel::{DeliveryOptions, GroupCommit, sqlx};
use sqlx::types::Json;

use crate::Report;
use crate::chart::{self, Series};
use crate::common::{self, Touched};
use crate::peers;
use crate::uow::verdict;

/// The peers, with the least ratio Keel aims for against each (Step 12: 2× every peer
/// but Graphile's defaults, which its batched mode outruns).
const PEERS: &[peers::Rival] = &[
    (&peers::SQLXMQ, Some(2.0)),
    (&peers::APALIS, Some(2.0)),
    (&peers::GRAPHILE, None),
    (&peers::GRAPHILE_BATCHED, Some(2.0)),
];

/// Consumers of the raw pipeline.
const RAW_CONSUMERS: u64 = 8;
const EFFECTS: &str = "SELECT count(*) FROM bench_effects";
const UPDATES: &str = "SELECT sum(n)::BIGINT FROM bench_rows";

/// Keel end to end: events per second.
pub async fn keel(
    url: &str,
    events: u64,
    producers: u64,
    grouping: Option<GroupCommit>,
) -> Result<f64, String> {
    let pool = common::raw_pool(url, 2).await?;
    common::reset(&pool).await?;
    let db = common::keel_database(url, producers as u32 + 16).await?;
    let app = App::builder(db, crate::uow::registry())
        .delivery(DeliveryOptions::default().group_commit(grouping))
        .start();
    let started = Instant::now();
    common::produce(app.dispatcher(), events, producers, 0).await?;
    common::wait_for_count(&pool, EFFECTS, events as i64, Duration::from_secs(300)).await?;
    let delivered = app
        .wait_until_delivered(Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    app.shutdown().await.map_err(|e| e.to_string())?;
    if !delivered {
        return Err("Keel: deliveries left pending after every effect was written".to_owned());
    }
    check_rows(&pool, events).await?;
    Ok(rate)
}

/// Keel's producers with no delivery at all: events per second. The same units of work
/// as [`keel()`] and the same outbox rows (the handler is registered, so each commit writes
/// its delivery), but the fast path is off and no relay runs, so the deliveries are left
/// pending. The handler's subscription is recorded first, as a relay records it in any
/// deployment (and in [`keel()`]): each outbox write looks the subscriptions up, for the
/// handlers of other processes.
pub async fn producers_only(url: &str, events: u64, producers: u64) -> Result<f64, String> {
    let pool = common::raw_pool(url, 2).await?;
    common::reset(&pool).await?;
    let registry: keel::postgres::Registry = crate::uow::registry();
    for handler in registry.handlers() {
        sqlx::query(
            "INSERT INTO keel_subscriptions (message, handler) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(handler.event())
        .bind(handler.name())
        .execute(&pool)
        .await
        .map_err(|e| format!("recording the subscription: {e}"))?;
    }
    let db = common::keel_database(url, producers as u32 + 16).await?;
    let app = App::builder(db, crate::uow::registry())
        .delivery(DeliveryOptions::default().fast_path(false))
        .relay(false)
        .start();
    let started = Instant::now();
    common::produce(app.dispatcher(), events, producers, 0).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    app.shutdown().await.map_err(|e| e.to_string())?;
    let updates = common::count(&pool, UPDATES).await?;
    let pending = common::count(
        &pool,
        "SELECT count(*) FROM keel_deliveries WHERE status = 'pending'",
    )
    .await?;
    let effects = common::count(&pool, EFFECTS).await?;
    if updates != events as i64 || pending != events as i64 || effects != 0 {
        return Err(format!(
            "producers only: expected {events} updates, {events} pending deliveries and no \
             effect, found {updates}, {pending} and {effects}"
        ));
    }
    Ok(rate)
}

/// What the hand-written pipeline's consumers do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Raw {
    /// No consumer: the producers alone, the yardstick of [`Raw::Grouped`].
    ProducersOnly,
    /// One outbox row per transaction: the ceiling Keel's `vs_raw` is measured against.
    OneAtATime,
    /// Up to [`GROUP`] rows per transaction, each effect its own statement as a group of
    /// handlers writes them, one commit, and a pause after a short claim so that groups
    /// are full: Keel's grouped delivery done by hand, with nothing it keeps per delivery.
    Grouped,
}

/// Rows a grouped raw consumer takes at once: the size of Keel's default groups.
const GROUP: usize = GroupCommit::MEMBERS;
/// Grouped raw consumers: with [`GROUP`] rows each, 64 in hand at most, as Keel runs 64
/// deliveries at once by default.
const GROUPED_CONSUMERS: u64 = 2;

/// The hand-written pipeline: events per second (for [`Raw::ProducersOnly`], the rate at
/// which the producers committed).
pub async fn raw(url: &str, events: u64, producers: u64, consumers: Raw) -> Result<f64, String> {
    let pool = common::raw_pool(url, (producers + RAW_CONSUMERS) as u32 + 2).await?;
    common::reset(&pool).await?;
    let handled = Arc::new(AtomicI64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    // A grouped consumer also waits after a claim that came back short, so that its
    // groups fill up: the cheapest it gets, paid in latency.
    let (count, claim, idle) = match consumers {
        Raw::ProducersOnly => (0, String::new(), Duration::ZERO),
        Raw::OneAtATime => (
            RAW_CONSUMERS,
            "DELETE FROM raw_outbox WHERE id = (
                 SELECT id FROM raw_outbox ORDER BY id LIMIT 1
                 FOR UPDATE SKIP LOCKED)
             RETURNING payload"
                .to_owned(),
            Duration::from_millis(1),
        ),
        Raw::Grouped => (
            GROUPED_CONSUMERS,
            format!(
                "DELETE FROM raw_outbox WHERE id = ANY(ARRAY(
                     SELECT id FROM raw_outbox ORDER BY id LIMIT {GROUP}
                     FOR UPDATE SKIP LOCKED))
                 RETURNING payload"
            ),
            Duration::from_millis(5),
        ),
    };
    for _ in 0..count {
        let (pool, handled) = (pool.clone(), handled.clone());
        let claim = claim.clone();
        let events = events as i64;
        tasks.push(tokio::spawn(async move {
            while handled.load(Ordering::Relaxed) < events {
                let mut tx = pool.begin().await?;
                let claimed: Vec<(Json<Touched>,)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(claim.as_str()))
                        .fetch_all(&mut *tx)
                        .await?;
                if claimed.is_empty() {
                    tx.rollback().await?;
                    tokio::time::sleep(idle).await;
                    continue;
                }
                for (payload,) in &claimed {
                    sqlx::query("INSERT INTO bench_effects (seq) VALUES ($1)")
                        .bind(payload.seq)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                handled.fetch_add(claimed.len() as i64, Ordering::Relaxed);
                if consumers == Raw::Grouped && claimed.len() < GROUP {
                    tokio::time::sleep(idle).await;
                }
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    let mut producing = Vec::new();
    for task in 0..producers {
        let pool = pool.clone();
        let n = common::share(events, producers, task);
        producing.push(tokio::spawn(async move {
            let row = task as i64 % 64 + 1;
            for i in 0..n {
                let seq = (task * events + i) as i64;
                let payload = serde_json::to_value(Touched { row, seq }).unwrap_or_default();
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
    common::join_all(producing).await?;
    common::join_all(tasks).await?;
    let rate = events as f64 / started.elapsed().as_secs_f64();
    if consumers == Raw::ProducersOnly {
        let updates = common::count(&pool, UPDATES).await?;
        let pending = common::count(&pool, "SELECT count(*) FROM raw_outbox").await?;
        if updates != events as i64 || pending != events as i64 {
            return Err(format!(
                "raw producers only: expected {events} updates and outbox rows, found \
                 {updates} and {pending}"
            ));
        }
    } else {
        check_rows(&pool, events).await?;
    }
    Ok(rate)
}

/// Every producer's update committed, every effect written once.
async fn check_rows(pool: &sqlx::PgPool, events: u64) -> Result<(), String> {
    let updates = common::count(pool, UPDATES).await?;
    let effects = common::count(pool, EFFECTS).await?;
    if updates != events as i64 || effects != events as i64 {
        return Err(format!(
            "expected {events} updates and effects, found {updates} and {effects}"
        ));
    }
    Ok(())
}

pub async fn run(
    url: &str,
    events: u64,
    producers: u64,
    svg: Option<&Path>,
    with_peers: bool,
) -> Result<Report, String> {
    let raw_rate = raw(url, events, producers, Raw::OneAtATime).await?;
    let raw_producer_rate = raw(url, events, producers, Raw::ProducersOnly).await?;
    let grouped_rate = raw(url, events, producers, Raw::Grouped).await?;
    let producer_rate = producers_only(url, events, producers).await?;
    let alone_rate = keel(url, events, producers, None).await?;
    let savepoints_rate = keel(url, events, producers, Some(GroupCommit::savepoints())).await?;
    let optimistic_rate = keel(url, events, producers, Some(GroupCommit::optimistic())).await?;
    let keel_rate = match DeliveryOptions::default().grouping() {
        None => alone_rate,
        Some(g) if g.uses_savepoints() => savepoints_rate,
        Some(_) => optimistic_rate,
    };
    let measured = if with_peers {
        peers::measure(url, PEERS, peers::Job::Delivery { events, producers }).await
    } else {
        Vec::new()
    };

    common::heading(&format!(
        "delivery: commit → handler effect → done, {events} events, {producers} producers, PostgreSQL"
    ));
    common::row(
        "raw sqlx pipeline (the ceiling)",
        raw_rate,
        "events/s",
        None,
    );
    common::row(
        "raw producers alone (no consumer)",
        raw_producer_rate,
        "events/s",
        None,
    );
    common::row(
        &format!("raw, {GROUPED_CONSUMERS} grouped consumers (≤ {GROUP} per commit)"),
        grouped_rate,
        "events/s",
        Some((grouped_rate / raw_producer_rate, "its producers")),
    );
    common::row(
        "Keel producers only (no delivery): the target's yardstick",
        producer_rate,
        "events/s",
        Some((keel_rate / producer_rate, "Keel vs it")),
    );
    for (label, rate) in [
        (
            "Keel (fast path + relay), each handler commits alone",
            alone_rate,
        ),
        ("Keel, group commit with savepoints", savepoints_rate),
        ("Keel, group commit, optimistic", optimistic_rate),
    ] {
        common::row(label, rate, "events/s", Some((rate / raw_rate, "raw")));
    }
    println!(
        "  (the defaults are the {} row; ratios to peers and goals use it)",
        match DeliveryOptions::default().grouping() {
            None => "first",
            Some(g) if g.uses_savepoints() => "second",
            Some(_) => "third",
        }
    );
    peers::rows(&measured, keel_rate, "events/s");
    let mut report = Report::new("delivery");
    report.set("events_per_s", keel_rate);
    report.set("alone_events_per_s", alone_rate);
    report.set("savepoints_events_per_s", savepoints_rate);
    report.set("optimistic_events_per_s", optimistic_rate);
    report.set("raw_events_per_s", raw_rate);
    report.set("vs_raw", keel_rate / raw_rate);
    report.set("producer_only_events_per_s", producer_rate);
    report.set("raw_producer_only_events_per_s", raw_producer_rate);
    report.set("raw_grouped_events_per_s", grouped_rate);
    report.set(
        "raw_grouped_vs_raw_producer_only",
        grouped_rate / raw_producer_rate,
    );
    report.set("vs_producer_only", keel_rate / producer_rate);
    let mut goals = vec![
        format!("vs_raw ≥ 0.8 {}", verdict(keel_rate / raw_rate >= 0.8)),
        format!(
            "vs_producer_only ≥ 0.9 {}",
            verdict(keel_rate / producer_rate >= 0.9)
        ),
    ];
    peers::record(&measured, keel_rate, &mut report, &mut goals);
    println!("  goals: {}", goals.join("; "));

    if let Some(dir) = svg {
        let counts = [1_u64, 2, 4, 8, 16];
        let points = (events / 2).max(1_000);
        let (mut keel_points, mut raw_points) = (Vec::new(), Vec::new());
        println!("\n  throughput vs producers ({points} events per point):");
        for p in counts {
            let r = raw(url, points, p, Raw::OneAtATime).await?;
            let k = keel(url, points, p, DeliveryOptions::default().grouping()).await?;
            println!(
                "    {p:>2} producers: raw {r:>8.0}/s, Keel {k:>8.0}/s ({:.2}×)",
                k / r
            );
            raw_points.push((p as f64, r));
            keel_points.push((p as f64, k));
        }
        let file = dir.join("delivery-throughput.svg");
        chart::line_chart(
            &file,
            "delivery: events per second, commit to handler effect (PostgreSQL)",
            "producers",
            "events per second",
            &[
                Series {
                    name: "Keel".to_owned(),
                    points: keel_points,
                },
                Series {
                    name: "raw sqlx pipeline (ceiling)".to_owned(),
                    points: raw_points,
                },
            ],
        )?;
        println!("  chart: {}", file.display());
    }
    Ok(report)
}
