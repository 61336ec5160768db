//! Peer benchmark: the keel-bench job with apalis 1.0 + apalis-postgres 1.0
//! (see `common/peer.rs`).
//!
//! - Schema: `PostgresStorage::setup` (apalis-postgres' own migrations).
//! - Enqueue: `apalis_postgres::queries::push_tasks` — the storage's own
//!   insert, documented in its README for pushing "inside a transaction" —
//!   on the producing transaction's connection, i.e. in the same transaction
//!   as the `bench_rows` update. The payload is encoded as the storage's
//!   `JsonCodec` does (`serde_json::to_vec`).
//! - Handler: inserts `bench_effects(seq)` on the pool (its own implicit
//!   transaction). apalis cannot complete a job in the handler's transaction:
//!   completion is apalis' normal acknowledgement, which its persistence layer
//!   batches and writes (`status = 'Done'`) in a later, separate transaction.
//!   So the effect and the completion are NOT atomic here, unlike sqlxmq and
//!   Keel. The timer stops on the effects (as for every peer); the time until
//!   every job is also marked `Done` is printed as well.
//! - Worker: one apalis worker in-process, `.concurrency(W)` with the
//!   handlers spawned onto the runtime (`.parallelize(tokio::spawn)`), fetch
//!   batch `Config::batch_size`, woken by apalis-postgres' LISTEN/NOTIFY
//!   (`Pubsub`) plus an interval poll as a fallback.

#[path = "../../common/peer.rs"]
mod peer;

use std::time::{Duration, Instant};

use apalis::prelude::{
    BackendExt, BoxDynError, Data, ParallelizeExt, Strategy, TaskBuilder, WorkerBuilder,
    WorkerBuilderExt, WorkerContext,
};
use apalis_postgres::{Config, PostgresStorage, Pubsub};
use peer::{BoxError, Job};
use sqlx::postgres::{PgConnection, PgPool};

const NAME: &str = "apalis";
const QUEUE: &str = "bench_effect";

/// Default W (most handlers in flight). Tried 4, 8, 16 and 32 with fetch
/// batches of 10, 50 and 100 on 2 cores; W = 16 with batch 100 was best
/// (median of 3 runs 1285 events/s, against 935 for W = 8 and 1046 for
/// W = 32); see README.
const DEFAULT_WORKERS: usize = 16;
/// Default fetch batch (`Config::batch_size`). apalis' default of 10 could
/// not keep up with the producers (331–463 events/s at W = 8).
const DEFAULT_BATCH: usize = 100;
/// Interval poll in addition to LISTEN/NOTIFY (ms).
const DEFAULT_POLL_MS: u64 = 50;

#[derive(Clone)]
struct Push;

impl peer::Enqueue for Push {
    async fn enqueue(&self, conn: &mut PgConnection, seq: i64) -> Result<(), BoxError> {
        let task = TaskBuilder::new(serde_json::to_vec(&Job { seq })?).build();
        apalis_postgres::queries::push_tasks(conn, QUEUE, vec![task]).await?;
        Ok(())
    }
}

async fn handle(job: Job, pool: Data<PgPool>) -> Result<(), BoxDynError> {
    sqlx::query("INSERT INTO bench_effects (seq) VALUES ($1)")
        .bind(job.seq)
        .execute(&*pool)
        .await?;
    Ok(())
}

async fn done_jobs(pool: &PgPool) -> Result<i64, BoxError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
            .fetch_one(pool)
            .await?,
    )
}

async fn run(args: peer::Args) -> Result<(), BoxError> {
    let workers = args.workers.unwrap_or(DEFAULT_WORKERS);
    // Knobs for trying settings; the defaults are the best found.
    let batch = peer::env_or("PEER_APALIS_BATCH", DEFAULT_BATCH)?;
    let poll_ms = peer::env_or("PEER_APALIS_POLL_MS", DEFAULT_POLL_MS)?;
    let lock_tasks = peer::env_or("PEER_APALIS_LOCK_TASKS", true)?;
    let parallelize = peer::env_or("PEER_APALIS_PARALLELIZE", true)?;
    if batch == 0 || poll_ms == 0 {
        return Err("PEER_APALIS_BATCH and PEER_APALIS_POLL_MS must be positive".into());
    }

    let producer_pool = peer::connect(&args.url, args.producers as u32).await?;
    // W handlers each hold a connection for their insert, plus the fetches,
    // acknowledgements and heartbeats of the worker (its LISTEN connection is
    // separate).
    let worker_pool = peer::connect(&args.url, workers as u32 + 4).await?;
    PostgresStorage::setup(&producer_pool).await?;
    peer::create_bench_tables(&producer_pool, args.producers).await?;

    let config = Config::default()
        .queue(QUEUE)
        .batch_size(batch)
        .lock_tasks(lock_tasks);
    let strategy = Strategy::new()
        .stream(Pubsub::new(worker_pool.clone(), QUEUE.to_owned()))
        .interval(Duration::from_millis(poll_ms));
    let backend = PostgresStorage::<Job>::new(&worker_pool)
        .with_config(config)
        .poll_with_strategy(strategy);
    let context = WorkerContext::new("keel-bench-peer");
    let worker = WorkerBuilder::new(&context)
        .backend(backend)
        .data(worker_pool.clone())
        .concurrency(workers);
    let worker = if parallelize {
        tokio::spawn(worker.parallelize(tokio::spawn).build(handle).run())
    } else {
        tokio::spawn(worker.build(handle).run())
    };

    let elapsed = peer::measure(&producer_pool, &args, &Push).await?;

    // Not timed: how long until apalis has also acknowledged every job.
    let acked_at = Instant::now();
    let deadline = acked_at + Duration::from_secs(60);
    let mut done = done_jobs(&producer_pool).await?;
    while (done as u64) < args.events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        done = done_jobs(&producer_pool).await?;
    }
    eprintln!(
        "{NAME}: {done} of {} jobs marked Done {:.3}s after the last effect",
        args.events,
        acked_at.elapsed().as_secs_f64()
    );
    if (done as u64) < args.events {
        eprintln!("{NAME}: warning: not every job was acknowledged");
    }

    context.stop()?;
    match tokio::time::timeout(Duration::from_secs(10), worker).await {
        Ok(joined) => joined??,
        Err(_) => eprintln!("{NAME}: warning: the worker did not stop within 10s"),
    }

    peer::report(
        NAME,
        &args,
        elapsed,
        peer::IN_TRANSACTION,
        &format!(
            "apalis 1.0 + apalis-postgres 1.0, concurrency({workers}), batch_size({batch}), \
             lock_tasks({lock_tasks}), parallelize({parallelize}), LISTEN/NOTIFY + {poll_ms}ms poll, \
             effect then batched acknowledgement in separate transactions"
        ),
    );
    producer_pool.close().await;
    worker_pool.close().await;
    Ok(())
}

fn main() {
    peer::run_main(run);
}
