//! Scale-out over JetStream: 1, 2 and 4 processes of one consuming service share its work.
//!
//! The handler waits 5 ms, as a call to another system would, and each process runs at
//! most `CONCURRENCY` handlers at once: one process is bound by that, so adding processes
//! should add throughput until the database or the CPUs are the limit. The processes share
//! one durable consumer (competing) and one database. Each round: the processes start and
//! say they are ready, then `JOBS` unkeyed commands are published to JetStream and the
//! clock runs until the last one is done.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use keel::nats::{CommandBus, ConsumerOptions, Consumers, JetStream, StreamOptions};
use keel::postgres::{App, Handler, HandlerContext, Registry};
use keel::{Command, DeliveryOptions, Error};
use serde::{Deserialize, Serialize};

use crate::common;

/// Handlers running at once in each process.
pub(crate) const CONCURRENCY: usize = 4;
/// The handler's wait.
const WAIT: Duration = Duration::from_millis(5);
/// Commands per round.
const JOBS: usize = 8_000;
/// Process counts measured.
pub(crate) const PROCESSES: [usize; 3] = [1, 2, 4];

#[derive(Serialize, Deserialize)]
struct Job {
    seq: usize,
}

impl Command for Job {
    const NAME: &'static str = "bench.job.v1";
}

async fn run_job(_job: &Job, _ctx: &mut HandlerContext) -> Result<(), Error> {
    tokio::time::sleep(WAIT).await;
    Ok(())
}

fn stream_options(round: &str) -> StreamOptions {
    StreamOptions::default()
        .name(format!("SCALE{round}"))
        .prefix(format!("scale{round}"))
}

/// The child process (`keel-bench scale-out-worker`): one instance of the consuming
/// service, until its standard input closes.
pub async fn worker(url: &str) -> Result<(), String> {
    let nats = std::env::var("NATS_URL").map_err(|_| "NATS_URL is not set")?;
    let round = std::env::var("KEEL_BENCH_ROUND").map_err(|_| "KEEL_BENCH_ROUND is not set")?;
    let jetstream = JetStream::connect(&nats, stream_options(&round))
        .await
        .map_err(|e| e.to_string())?;
    let db = common::keel_database(url, CONCURRENCY as u32 + 4).await?;
    let mut registry = Registry::new();
    registry
        .register(Handler::command::<Job, _>("run_job", run_job))
        .map_err(|e| e.to_string())?;
    let delivery = DeliveryOptions::default()
        .max_in_flight(CONCURRENCY)
        .batch_size(32);
    let app = App::builder(db.clone(), registry)
        .delivery(delivery)
        .start();
    let consumers = Consumers::start(
        app.dispatcher(),
        jetstream,
        ConsumerOptions::new("scale"),
        &["run_job"],
    )?;
    println!("READY");
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed_tx.send(());
    });
    let _ = closed.await;
    consumers.shutdown().await;
    app.shutdown().await.map_err(|e| e.to_string())
}

async fn done(pool: &keel::sqlx::PgPool) -> Result<i64, String> {
    common::count(
        pool,
        "SELECT count(*) FROM keel_done WHERE handler = 'run_job'",
    )
    .await
}

fn spawn(
    url: &str,
    nats: &str,
    round: &str,
) -> Result<(Child, std::sync::mpsc::Receiver<String>), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Process::new(exe)
        .arg("scale-out-worker")
        .env("DATABASE_URL", url)
        .env("NATS_URL", nats)
        .env("KEEL_BENCH_ROUND", round)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting a worker process: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from a worker")?;
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, lines))
}

/// One round with `processes` workers on a fresh consumer database: jobs per second.
async fn round(url: &str, nats: &str, processes: usize) -> Result<f64, String> {
    let consumer_url = crate::nats::second_database(url).await?;
    common::keel_database(&consumer_url, 1)
        .await?
        .close()
        .await
        .map_err(|e| e.to_string())?;
    let round = uuid::Uuid::now_v7().simple().to_string();
    let jetstream = JetStream::connect(nats, stream_options(&round))
        .await
        .map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    for _ in 0..processes {
        children.push(spawn(&consumer_url, nats, &round)?);
    }
    for (child, lines) in &mut children {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line == "READY" => {}
            other => {
                let _ = child.kill();
                return Err(format!("a worker did not start: {other:?}"));
            }
        }
    }
    let pool = common::raw_pool(&consumer_url, 1).await?;
    let bus = CommandBus::new(jetstream);
    let jobs: Vec<Job> = (0..JOBS).map(|seq| Job { seq }).collect();
    let started = Instant::now();
    for chunk in jobs.chunks(500) {
        bus.send_all(chunk).await.map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while done(&pool).await? < JOBS as i64 {
        if Instant::now() > deadline {
            return Err(format!(
                "{processes} processes: jobs still pending after 300 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = JOBS as f64 / started.elapsed().as_secs_f64();
    for (mut child, _) in children {
        drop(child.stdin.take());
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("a worker failed: {status}"));
        }
    }
    pool.close().await;
    Ok(rate)
}

/// Jobs per second with 1, 2 and 4 processes.
pub async fn run(url: &str, nats: &str) -> Result<Vec<(usize, f64)>, String> {
    let mut rates = Vec::new();
    for processes in PROCESSES {
        rates.push((processes, round(url, nats, processes).await?));
    }
    Ok(rates)
}
