//! Peer benchmark: the keel-bench job with sqlxmq 0.6 (see `common/peer.rs`).
//!
//! - Schema: sqlxmq's own migrations (the `*.up.sql` files of its repository,
//!   copied into `migrations/`), run in order.
//! - Enqueue: `JobBuilder::spawn` on the producing transaction's connection,
//!   i.e. in the same transaction as the `bench_rows` update.
//! - Handler: inserts `bench_effects(seq)` and completes the job with
//!   `complete_with_transaction`, i.e. effect and completion commit together.
//! - Worker: one `JobRunner` in-process, `set_concurrency(W / 4, W)`: at most
//!   W jobs in flight, polling for up to 3W/4 more when fewer than W/4 run.

#[path = "../../common/peer.rs"]
mod peer;

use peer::{BoxError, Job};
use sqlx::postgres::{PgConnection, PgPool};
use sqlxmq::{CurrentJob, JobBuilder, JobRunnerOptions};

const NAME: &str = "sqlxmq";
const JOB_NAME: &str = "bench_effect";

/// sqlxmq's migrations, in the order of their timestamps.
const MIGRATIONS: [&str; 5] = [
    include_str!("../migrations/20210316025847_setup.up.sql"),
    include_str!("../migrations/20210921115907_clear.up.sql"),
    include_str!("../migrations/20211013151757_fix_mq_latest_message.up.sql"),
    include_str!("../migrations/20220208120856_fix_concurrent_poll.up.sql"),
    include_str!("../migrations/20220713122907_fix-clear_all-keep-nil-message.up.sql"),
];

/// Default W (most jobs in flight). Of the settings tried on 2 cores —
/// `set_concurrency` (2, 4), (4, 8), (8, 16), (16, 32), (32, 64), (4, 16),
/// (8, 32), (16, 64) — (4, 16) was best under load (median of 3 runs 981
/// events/s against 732 for (8, 16)) and tied with (8, 16) on a quiet
/// machine (1230 against 1246); see README.
const DEFAULT_WORKERS: usize = 16;

#[derive(Clone)]
struct Spawn;

impl peer::Enqueue for Spawn {
    async fn enqueue(&self, conn: &mut PgConnection, seq: i64) -> Result<(), BoxError> {
        JobBuilder::new(JOB_NAME)
            .set_json(&Job { seq })?
            .spawn(&mut *conn)
            .await?;
        Ok(())
    }
}

async fn handle(mut job: CurrentJob) -> Result<(), BoxError> {
    let Job { seq } = job.json::<Job>()?.ok_or("job without a JSON payload")?;
    let mut tx = job.pool().begin().await?;
    sqlx::query("INSERT INTO bench_effects (seq) VALUES ($1)")
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    job.complete_with_transaction(tx).await?;
    Ok(())
}

async fn setup(pool: &PgPool) -> Result<(), BoxError> {
    for migration in MIGRATIONS {
        sqlx::raw_sql(migration).execute(pool).await?;
    }
    Ok(())
}

async fn run(args: peer::Args) -> Result<(), BoxError> {
    let workers = args.workers.unwrap_or(DEFAULT_WORKERS);
    // Knob for trying settings: the runner's minimum (default W/4).
    let min = peer::env_or("PEER_SQLXMQ_MIN", (workers / 4).max(1))?.clamp(1, workers);
    let producer_pool = peer::connect(&args.url, args.producers as u32).await?;
    // Up to W handlers each hold a connection for their transaction; the
    // runner also polls and deletes on this pool (its LISTEN connection is
    // separate).
    let worker_pool = peer::connect(&args.url, workers as u32 + 2).await?;
    setup(&producer_pool).await?;
    peer::create_bench_tables(&producer_pool, args.producers).await?;

    let mut runner = JobRunnerOptions::new(&worker_pool, |job: CurrentJob| {
        tokio::spawn(async move {
            let name = job.name().to_owned();
            if let Err(error) = handle(job).await {
                eprintln!("{NAME}: job {name} failed (it will be retried): {error}");
            }
        });
    })
    .set_concurrency(min, workers)
    .run()
    .await?;

    let elapsed = peer::measure(&producer_pool, &args, &Spawn).await?;
    runner.stop().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM mq_msgs WHERE id <> uuid_nil()")
        .fetch_one(&producer_pool)
        .await?;
    if left != 0 {
        eprintln!("{NAME}: warning: {left} messages still in mq_msgs");
    }
    peer::report(
        NAME,
        &args,
        elapsed,
        peer::IN_TRANSACTION,
        &format!(
            "sqlxmq 0.6, set_concurrency({min}, {workers}), effect + complete_with_transaction in one transaction"
        ),
    );
    producer_pool.close().await;
    worker_pool.close().await;
    Ok(())
}

fn main() {
    peer::run_main(run);
}
