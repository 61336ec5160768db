//! The job every peer binary measures, shared by source: each peer crate
//! includes this file with `#[path]`, so it compiles against that crate's own
//! sqlx version (0.8 for sqlxmq, 0.9 for apalis-postgres).
//!
//! 1. `bench_rows` (one row per producer) and `bench_effects` are created.
//! 2. The caller starts the library's workers; their handler inserts
//!    `bench_effects(seq)` for a job with payload `{"seq": i64}`.
//! 3. Timer starts. P producers each run their share of N transactions:
//!    `BEGIN; UPDATE bench_rows SET n = n + 1 WHERE id = $producer;
//!    <enqueue {"seq"}>; COMMIT`.
//! 4. Timer stops when `count(*) FROM bench_effects` = N (polled every
//!    10 ms, error after 300 s); `sum(n)` of `bench_rows` must be N.

use std::error::Error;
use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Poll period of the completion wait.
const POLL: Duration = Duration::from_millis(10);
/// Give up waiting for the effects after this long.
const GIVE_UP: Duration = Duration::from_secs(300);

/// The job's payload: `{"seq": i64}`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub seq: i64,
}

/// `<binary> --url URL --events N --producers P [--workers W]`.
#[derive(Debug, Clone)]
pub struct Args {
    pub url: String,
    pub events: u64,
    pub producers: u64,
    pub workers: Option<usize>,
}

impl Args {
    pub fn parse() -> Result<Self, BoxError> {
        let mut url = None;
        let mut events = 20_000_u64;
        let mut producers = 8_u64;
        let mut workers = None;
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--url" => url = Some(value()?),
                "--events" => events = value()?.parse()?,
                "--producers" => producers = value()?.parse()?,
                "--workers" => workers = Some(value()?.parse()?),
                "-h" | "--help" => {
                    println!(
                        "usage: {} --url POSTGRES_URL [--events N (20000)] [--producers P (8)] [--workers W]",
                        std::env::args().next().unwrap_or_default()
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        let url = url.ok_or("--url is required")?;
        if events == 0 || producers == 0 {
            return Err("--events and --producers must be positive".into());
        }
        if workers == Some(0) {
            return Err("--workers must be positive".into());
        }
        Ok(Self {
            url,
            events,
            producers,
            workers,
        })
    }
}

/// Puts one job with payload `{"seq": seq}` into the queue on `conn`, which is
/// inside the producing transaction.
pub trait Enqueue: Clone + Send + Sync + 'static {
    fn enqueue(
        &self,
        conn: &mut PgConnection,
        seq: i64,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Reads a tuning knob from the environment (used to try library settings;
/// the defaults are the best found).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, BoxError> {
    match std::env::var(name) {
        Ok(value) => Ok(value
            .parse()
            .map_err(|_| format!("{name}={value} is not valid"))?),
        Err(_) => Ok(default),
    }
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, BoxError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(max_connections.min(4))
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await?)
}

/// Creates `bench_rows` with one row per producer (ids `0..producers`, n = 0)
/// and `bench_effects`.
pub async fn create_bench_tables(pool: &PgPool, producers: u64) -> Result<(), BoxError> {
    sqlx::raw_sql(
        "CREATE TABLE bench_rows (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);
         CREATE TABLE bench_effects (seq BIGINT PRIMARY KEY);",
    )
    .execute(pool)
    .await?;
    sqlx::query("INSERT INTO bench_rows (id, n) SELECT g, 0 FROM generate_series(0, $1 - 1) AS g")
        .bind(producers as i64)
        .execute(pool)
        .await?;
    Ok(())
}

/// Runs the P producers to completion; returns when every producing
/// transaction has committed. Producer `p` gets events `[start, start + count)`
/// where the N events are split as evenly as possible.
pub async fn produce<E: Enqueue>(pool: &PgPool, args: &Args, enqueue: &E) -> Result<(), BoxError> {
    let (per, extra) = (args.events / args.producers, args.events % args.producers);
    let mut tasks = Vec::new();
    let mut start = 0_u64;
    for producer in 0..args.producers {
        let count = per + u64::from(producer < extra);
        let first = start;
        start += count;
        let pool = pool.clone();
        let enqueue = enqueue.clone();
        tasks.push(tokio::spawn(async move {
            for seq in first..first + count {
                let mut tx = pool.begin().await?;
                sqlx::query("UPDATE bench_rows SET n = n + 1 WHERE id = $1")
                    .bind(producer as i64)
                    .execute(&mut *tx)
                    .await?;
                enqueue.enqueue(&mut tx, seq as i64).await?;
                tx.commit().await?;
            }
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

pub async fn count_effects(pool: &PgPool) -> Result<i64, BoxError> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM bench_effects")
            .fetch_one(pool)
            .await?,
    )
}

/// Polls every 10 ms until `bench_effects` holds `events` rows; errors after 300 s.
pub async fn wait_for_effects(pool: &PgPool, events: u64) -> Result<(), BoxError> {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let n = count_effects(pool).await?;
        if n as u64 >= events {
            if n as u64 > events {
                return Err(format!("bench_effects has {n} rows, expected {events}").into());
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "gave up after {}s: bench_effects has {n} of {events} rows",
                GIVE_UP.as_secs()
            )
            .into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `sum(n)` over `bench_rows` must equal `events`.
pub async fn verify_rows(pool: &PgPool, events: u64) -> Result<(), BoxError> {
    let sum = sqlx::query_scalar::<_, i64>("SELECT COALESCE(sum(n), 0)::BIGINT FROM bench_rows")
        .fetch_one(pool)
        .await?;
    if sum as u64 != events {
        return Err(format!("sum(n) of bench_rows is {sum}, expected {events}").into());
    }
    Ok(())
}

/// Starts the timer, runs the producers, waits for all effects, stops the
/// timer and verifies the producers' rows. Returns the elapsed time.
pub async fn measure<E: Enqueue>(
    pool: &PgPool,
    args: &Args,
    enqueue: &E,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    produce(pool, args, enqueue).await?;
    let produced = started.elapsed();
    wait_for_effects(pool, args.events).await?;
    let elapsed = started.elapsed();
    verify_rows(pool, args.events).await?;
    eprintln!(
        "producers committed {} transactions in {:.3}s; last effect after {:.3}s",
        args.events,
        produced.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(elapsed)
}

/// `enqueue=` value of the `PEER` line: the job is put in the queue inside
/// the producing transaction (the other value, `after-commit`, would mean it
/// is pushed right after that transaction commits; no peer needs it now).
pub const IN_TRANSACTION: &str = "in-transaction";

/// Prints the human line and then the machine-readable `PEER …` line (last).
pub fn report(name: &str, args: &Args, elapsed: Duration, enqueue: &str, settings: &str) {
    let seconds = elapsed.as_secs_f64();
    let rate = args.events as f64 / seconds;
    println!(
        "{name}: {} events from {} producers in {seconds:.3}s = {rate:.1} events/s (enqueue {enqueue}; {settings})",
        args.events, args.producers,
    );
    println!(
        "PEER {name} events_per_s={rate:.1} events={} producers={} seconds={seconds:.3} enqueue={enqueue}",
        args.events, args.producers,
    );
}

/// Runs `body` on a multi-threaded tokio runtime; on error prints
/// `error: …` to stderr and exits 1.
pub fn run_main<F: Future<Output = Result<(), BoxError>>>(body: impl FnOnce(Args) -> F) {
    let result = Args::parse().and_then(|args| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(body(args))
    });
    if let Err(error) = result {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
