//! `latency`: time from commit to handler start (and, in `grouping`, to the handler's
//! effect committed).
//!
//! - in-process (fast path): the producer's process delivers its own commit. The clock
//!   starts when the unit of work returns its receipt (the `COMMIT` has completed) and stops
//!   when the handler starts.
//! - cross-process (relay): the producer delivers nothing itself (no fast path, no relay);
//!   a second process, this program re-run as `latency-consumer`, runs a relay woken by
//!   PostgreSQL `NOTIFY`. Both clocks are the machine's wall clock.
//!
//! Events are produced one at a time at a steady pace (not a saturating load), so the
//! figures are the path's latency, not queueing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel::postgres::{App, Handler, HandlerContext, Registry};
use keel::{DeliveryOptions, Error};

use crate::Report;
use crate::chart;
use crate::common::{self, Touched};
use crate::grouping;
use crate::uow::verdict;

/// Pause between two events.
pub(crate) const PACE: Duration = Duration::from_millis(2);

/// Handler start times by event sequence number.
static STARTED: Mutex<Option<HashMap<i64, (Instant, u128)>>> = Mutex::new(None);

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

async fn started(event: &Touched, _ctx: &mut HandlerContext) -> Result<(), Error> {
    let now = (Instant::now(), unix_nanos());
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(event.seq, now);
    Ok(())
}

pub(crate) fn started_count() -> usize {
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or(0, HashMap::len)
}

pub(crate) fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<Touched, _>("latency_probe", started))
        .expect("one handler");
    registry
}

pub(crate) async fn produce_one(app: &App, seq: i64) -> Result<keel::Committed<()>, Error> {
    app.database()
        .clone()
        .unit_of_work(async |tx| common::touch(tx, 1, seq).await)
        .await
}

/// Forgets the handler start times noted so far.
pub(crate) fn reset_started() {
    *STARTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
}

/// The handler start times noted so far, by sequence number.
pub(crate) fn take_started() -> HashMap<i64, (Instant, u128)> {
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default()
}

/// In-process: commit-to-start latencies in milliseconds.
async fn in_process(url: &str, n: u64) -> Result<Vec<f64>, String> {
    let db = common::keel_database(url, 8).await?;
    let app = App::builder(db, registry()).start();
    *STARTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
    let mut committed = HashMap::new();
    for seq in 0..n as i64 {
        let receipt = produce_one(&app, seq).await.map_err(|e| e.to_string())?;
        committed.insert(seq, Instant::now());
        app.dispatcher()
            .dispatch(receipt)
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(PACE).await;
    }
    app.wait_until_delivered(Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    app.shutdown().await.map_err(|e| e.to_string())?;
    let started = STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    let mut latencies = Vec::with_capacity(n as usize);
    for (seq, at) in committed {
        let (start, _) = started
            .get(&seq)
            .ok_or(format!("event {seq} was never handled"))?;
        latencies.push(start.saturating_duration_since(at).as_secs_f64() * 1e3);
    }
    Ok(latencies)
}

/// Cross-process: commit-to-start latencies in milliseconds, the handler running in a
/// child process.
async fn cross_process(url: &str, n: u64) -> Result<Vec<f64>, String> {
    let db = common::keel_database(url, 8).await?;
    let app = App::builder(db, registry())
        .delivery(DeliveryOptions::default().fast_path(false))
        .relay(false)
        .start();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["latency-consumer", "--events", &n.to_string()])
        .env("DATABASE_URL", url)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the consumer process: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from the consumer")?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(60), lines.recv()).await {
        Ok(Some(line)) if line == "READY" => {}
        other => {
            let _ = child.kill();
            return Err(format!("the consumer process did not start: {other:?}"));
        }
    }
    let mut committed = HashMap::new();
    for seq in 0..n as i64 {
        let receipt = produce_one(&app, seq).await.map_err(|e| e.to_string())?;
        committed.insert(seq, unix_nanos());
        app.dispatcher()
            .dispatch(receipt)
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(PACE).await;
    }
    let mut latencies = Vec::with_capacity(n as usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    while latencies.len() < n as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(line)) = tokio::time::timeout(left, lines.recv()).await else {
            let _ = child.kill();
            return Err(format!(
                "the consumer reported {} of {n} events",
                latencies.len()
            ));
        };
        let mut parts = line.split_whitespace();
        let (Some(seq), Some(at)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(seq), Ok(at)) = (seq.parse::<i64>(), at.parse::<u128>()) else {
            continue;
        };
        let commit = committed
            .get(&seq)
            .ok_or(format!("the consumer handled an unknown event {seq}"))?;
        latencies.push(at.saturating_sub(*commit) as f64 / 1e6);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    app.shutdown().await.map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the consumer process failed: {status}"));
    }
    Ok(latencies)
}

/// The child process of the cross-process measure: a relay whose handler notes when it
/// starts. Prints `READY` once listening, then `seq unix_nanos` per event.
pub async fn consumer(url: &str, n: u64) -> Result<(), String> {
    let db = common::keel_database(url, 8).await?;
    *STARTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
    let app = App::builder(db, registry()).start();
    // Let the relay's listener connect before the producer starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("READY");
    let deadline = Instant::now() + Duration::from_secs(120);
    while started_count() < n as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.shutdown().await.map_err(|e| e.to_string())?;
    let started = STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    for (seq, (_, at)) in started {
        println!("{seq} {at}");
    }
    Ok(())
}

pub(crate) fn summary(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    (
        common::percentile(samples, 50.0),
        common::percentile(samples, 99.0),
        common::percentile(samples, 100.0),
    )
}

pub async fn run(url: &str, n: u64, svg: Option<&Path>) -> Result<Report, String> {
    let pool = common::raw_pool(url, 2).await?;
    common::reset(&pool).await?;
    let mut local = in_process(url, n).await?;
    common::reset(&pool).await?;
    let mut remote = cross_process(url, n).await?;
    let (l50, l99, lmax) = summary(&mut local);
    let (r50, r99, rmax) = summary(&mut remote);

    common::heading(&format!(
        "latency: commit → handler start, {n} events one at a time every {} ms, PostgreSQL",
        PACE.as_millis()
    ));
    println!(
        "  {:<40} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "  {:<40} {l50:>9.3} {l99:>9.3} {lmax:>9.3}",
        "in-process (fast path)"
    );
    println!(
        "  {:<40} {r50:>9.3} {r99:>9.3} {rmax:>9.3}",
        "cross-process (relay, NOTIFY)"
    );
    println!(
        "  goals: p50 ≤ 1 ms in-process {}; p99 ≤ 20 ms cross-process {}",
        verdict(l50 <= 1.0),
        verdict(r99 <= 20.0)
    );
    if let Some(dir) = svg {
        let file = dir.join("latency.svg");
        chart::distribution_chart(
            &file,
            "latency: commit to handler start (PostgreSQL)",
            "milliseconds",
            &[
                ("in-process (fast path)".to_owned(), local.clone()),
                ("cross-process (relay, NOTIFY)".to_owned(), remote.clone()),
            ],
        )?;
        println!("  chart: {}", file.display());
    }

    let mut report = Report::new("latency");
    report.set("in_process_p50_ms", l50);
    report.set("in_process_p99_ms", l99);
    report.set("cross_process_p50_ms", r50);
    report.set("cross_process_p99_ms", r99);
    grouping::run(url, n, &mut report).await?;
    Ok(report)
}
