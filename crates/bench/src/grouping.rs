//! `latency`, second table: what group commit costs a handler's effect in latency.
//!
//! The clock starts when a producer's unit of work returns its receipt (its `COMMIT` has
//! completed) and stops when the handler's unit of work returns (its effect and done mark
//! committed, alone or with its group). In-process (fast path), PostgreSQL, at a steady
//! pace from one producer, four and eight, with handlers committing alone, in groups with
//! savepoints and in optimistic groups (the default). Grouping buys throughput under load
//! (`delivery`); this shows what it charges each effect for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel::postgres::{App, Handler, HandlerContext, Registry};
use keel::{DeliveryOptions, Error, GroupCommit};

use crate::Report;
use crate::common::{self, Touched};
use crate::latency::{PACE, summary};

/// When each event's effect committed, by sequence number.
static COMMITTED: Mutex<Option<HashMap<i64, Instant>>> = Mutex::new(None);

/// Producers of each load: one at a time, four, then eight at once (about what the
/// handlers committing alone can take on the benchmark machine), each pausing [`PACE`].
const LOADS: [u64; 3] = [1, 4, 8];

/// The shapes compared, with their report keys.
fn shapes() -> [(&'static str, &'static str, Option<GroupCommit>); 3] {
    [
        ("alone", "each handler commits alone", None),
        (
            "savepoints",
            "group commit with savepoints",
            Some(GroupCommit::savepoints()),
        ),
        (
            "optimistic",
            "group commit, optimistic (default)",
            Some(GroupCommit::optimistic()),
        ),
    ]
}

async fn effect(event: &Touched, ctx: &mut HandlerContext) -> Result<(), Error> {
    common::write_effect(event, ctx).await?;
    let now = Instant::now();
    COMMITTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(event.seq, now);
    Ok(())
}

/// Commit-to-effect latencies in milliseconds, `n` events from `producers` producers.
async fn measure(
    url: &str,
    n: u64,
    producers: u64,
    grouping: Option<GroupCommit>,
) -> Result<Vec<f64>, String> {
    let db = common::keel_database(url, 16).await?;
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<Touched, _>("effect", effect))
        .map_err(|e| e.to_string())?;
    let app = App::builder(db, registry)
        .delivery(DeliveryOptions::default().group_commit(grouping))
        .start();
    *COMMITTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
    let mut tasks = Vec::new();
    for task in 0..producers {
        let app = app.clone();
        let events = common::share(n, producers, task);
        tasks.push(tokio::spawn(async move {
            let row = task as i64 + 1;
            let mut committed = Vec::with_capacity(events as usize);
            for i in 0..events {
                let seq = (task * n + i) as i64;
                let receipt = app
                    .database()
                    .clone()
                    .unit_of_work(async |tx| common::touch(tx, row, seq).await)
                    .await?;
                committed.push((seq, Instant::now()));
                app.dispatcher().dispatch(receipt)?;
                tokio::time::sleep(PACE).await;
            }
            Ok::<_, Error>(committed)
        }));
    }
    let committed: Vec<(i64, Instant)> = common::join_all(tasks).await?.concat();
    app.wait_until_delivered(Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    app.shutdown().await.map_err(|e| e.to_string())?;
    let effects = COMMITTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    committed
        .into_iter()
        .map(|(seq, at)| {
            let done = effects
                .get(&seq)
                .ok_or(format!("the effect of event {seq} never committed"))?;
            Ok(done.saturating_duration_since(at).as_secs_f64() * 1e3)
        })
        .collect()
}

/// Prints the table and records `effect_p50_ms_<shape>_<producers>p` (and p99) in `report`.
pub async fn run(url: &str, n: u64, report: &mut Report) -> Result<(), String> {
    let pool = common::raw_pool(url, 2).await?;
    let mut rows = Vec::new();
    for producers in LOADS {
        for (key, label, grouping) in shapes() {
            common::reset(&pool).await?;
            let mut latencies = measure(url, n, producers, grouping).await?;
            let (p50, p99, max) = summary(&mut latencies);
            report.set(format!("effect_p50_ms_{key}_{producers}p"), p50);
            report.set(format!("effect_p99_ms_{key}_{producers}p"), p99);
            rows.push((producers, label, p50, p99, max));
        }
    }
    common::heading(&format!(
        "latency: commit → handler's effect committed, {n} events per row, each producer \
         pausing {} ms, in-process, PostgreSQL",
        PACE.as_millis()
    ));
    println!(
        "  {:<52} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p99 ms", "max ms"
    );
    for (producers, label, p50, p99, max) in rows {
        let load = format!(
            "{producers} producer{}",
            if producers == 1 { "" } else { "s" }
        );
        println!(
            "  {:<52} {p50:>9.3} {p99:>9.3} {max:>9.3}",
            format!("{load}, {label}")
        );
    }
    Ok(())
}
