//! `likes`: N users like one post.
//!
//! - baseline: raw sqlx, 16 connections looping `BEGIN; SELECT … FOR UPDATE; UPDATE; COMMIT`
//!   on one row for a fixed time: the pgbench hot-row workload.
//! - A: the same through Keel, one unit of work with a row lock per like, 16 at a time.
//! - B: the command bus. 16 senders send N `VoteForPost` commands; workers apply them in
//!   batches of 100 per unit of work. Measured end to end (first send to last like
//!   applied), and also as the drain rate of N commands already queued.
//! - C: B over NATS JetStream: the 16 senders publish each like straight to a throwaway
//!   `nats-server` (acknowledged = stored), the service accepts them into its outbox in
//!   batches and its relay applies them as in B. End to end.

use std::time::{Duration, Instant};

use keel::nats::{CommandBus, ConsumerOptions, Consumers, JetStream, StreamOptions};
use keel::postgres::{App, Database, Handler, HandlerContext, Registry};
use keel::{Command, DatabaseOptions, DeliveryOptions, Error, RowLock, UnitOfWorkOptions, sqlx};
use serde::{Deserialize, Serialize};

use crate::Report;

const CONCURRENCY: usize = 16;
const BASELINE_FOR: Duration = Duration::from_secs(5);

#[derive(Clone, Serialize, Deserialize)]
struct VoteForPost {
    post_id: i64,
    user_id: i64,
}

impl Command for VoteForPost {
    const NAME: &'static str = "bench.vote_for_post.v1";
    fn key(&self) -> Option<String> {
        Some(format!("post:{}", self.post_id))
    }
    // Likes commute: serialized per post, in any order (no per-key commit order to pay).
    const ORDERED: bool = false;
}

async fn count_votes(votes: &[VoteForPost], ctx: &mut HandlerContext) -> Result<(), Error> {
    let (post_id, n) = (votes[0].post_id, votes.len() as i64);
    ctx.unit_of_work(async |tx| {
        sqlx::query("UPDATE posts SET likes = likes + $1 WHERE id = $2")
            .bind(n)
            .bind(post_id)
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

/// The post back to no likes and the outbox empty, then the database settled.
async fn reset(pool: &sqlx::PgPool) -> Result<(), String> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS posts;
         CREATE TABLE posts (id BIGINT PRIMARY KEY, likes BIGINT NOT NULL);
         INSERT INTO posts VALUES (1, 0);
         DELETE FROM keel_delivery_errors; DELETE FROM keel_deliveries; DELETE FROM keel_done;
         DELETE FROM keel_events; DELETE FROM keel_keys;",
    )
    .execute(pool)
    .await
    .map_err(|e| format!("resetting the likes: {e}"))?;
    crate::common::settle(pool).await
}

async fn likes(db: &Database) -> Result<i64, String> {
    let mut conn = db.acquire().await.map_err(|e| e.to_string())?;
    let (n,): (i64,) = sqlx::query_as("SELECT likes FROM posts WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(n)
}

/// Raw sqlx, the hot-row transaction pgbench would run, for `BASELINE_FOR`.
async fn baseline(url: &str) -> Result<f64, String> {
    let pool = crate::common::raw_pool(url, CONCURRENCY as u32).await?;
    let deadline = Instant::now() + BASELINE_FOR;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0_u64;
            while Instant::now() < deadline {
                let mut tx = pool.begin().await?;
                let (likes,): (i64,) =
                    sqlx::query_as("SELECT likes FROM posts WHERE id = 1 FOR UPDATE")
                        .fetch_one(&mut *tx)
                        .await?;
                sqlx::query("UPDATE posts SET likes = $1 WHERE id = 1")
                    .bind(likes + 1)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                done += 1;
            }
            Ok::<_, sqlx::Error>(done)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    pool.close().await;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// A: one unit of work with a row lock per like.
async fn direct(db: &Database, n: u32) -> Result<(f64, u64), String> {
    let per_task = n as usize / CONCURRENCY;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut retries = 0_u64;
            let options = UnitOfWorkOptions::named("like");
            for _ in 0..per_task {
                retries += db
                    .unit_of_work_with(&options, async |tx| {
                        let _ = tx.lock(RowLock::for_update("posts", 1)).await?;
                        let (likes,): (i64,) =
                            sqlx::query_as("SELECT likes FROM posts WHERE id = 1")
                                .fetch_one(tx.conn())
                                .await?;
                        sqlx::query("UPDATE posts SET likes = $1 WHERE id = 1")
                            .bind(likes + 1)
                            .execute(tx.conn())
                            .await?;
                        Ok(u64::from(tx.attempt() - 1))
                    })
                    .await?
                    .into_value();
            }
            Ok::<_, Error>(retries)
        }));
    }
    let mut retries = 0;
    for task in tasks {
        retries += task
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let rate = (per_task * CONCURRENCY) as f64 / started.elapsed().as_secs_f64();
    Ok((rate, retries))
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(Handler::command_batch::<VoteForPost, _>(
            "count_votes",
            1_000,
            count_votes,
        ))
        .expect("one handler");
    registry
}

fn options() -> DeliveryOptions {
    DeliveryOptions::default().poll_interval(Duration::from_millis(5))
}

/// How one like is sent: through a sender of type `S`.
type Send<S> = for<'a> fn(
    &'a S,
    VoteForPost,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), Error>> + std::marker::Send + 'a>,
>;

/// `n` likes of post 1, sent by `CONCURRENCY` tasks, each one like after another.
async fn send_likes<S: Clone + std::marker::Send + Sync + 'static>(
    sender: &S,
    n: u32,
    send: Send<S>,
) -> Result<(), String> {
    let per_task = n as usize / CONCURRENCY;
    let mut tasks = Vec::new();
    for task in 0..CONCURRENCY {
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let user_id = (task * per_task + i) as i64;
                send(
                    &sender,
                    VoteForPost {
                        post_id: 1,
                        user_id,
                    },
                )
                .await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The likes sent through the local bus: one small transaction each.
async fn send_all(app: &App, n: u32) -> Result<(), String> {
    send_likes(app, n, |app, vote| {
        Box::pin(async move { app.session().send(vote).await.map(|_| ()) })
    })
    .await
}

/// B end to end: send with a worker running, until the last like is applied.
async fn bus(db: &Database, n: u32) -> Result<(f64, f64), String> {
    let app = App::builder(db.clone(), registry())
        .delivery(options())
        .start();
    let started = Instant::now();
    send_all(&app, n).await?;
    let sent = started.elapsed();
    while !app
        .wait_until_delivered(Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?
    {}
    let elapsed = started.elapsed();
    app.dispatcher().shutdown().await;
    let sent_count = (n as usize / CONCURRENCY * CONCURRENCY) as f64;
    Ok((
        sent_count / elapsed.as_secs_f64(),
        sent_count / sent.as_secs_f64(),
    ))
}

/// C end to end: the likes published to JetStream by 16 senders, accepted and applied by
/// one instance of the service, until the last like is applied. Returns the end-to-end
/// and the sending rates.
async fn through_broker(db: &Database, n: u32) -> Result<(f64, f64), String> {
    let server = crate::nats::start_server().await?;
    let jetstream = JetStream::connect(&server.url, StreamOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let app = App::builder(db.clone(), registry())
        .delivery(options())
        .start();
    let consumers = Consumers::start(
        app.dispatcher(),
        jetstream.clone(),
        ConsumerOptions::new("likes"),
        &["count_votes"],
    )?;
    let bus = CommandBus::new(jetstream);
    let expected = (n as usize / CONCURRENCY * CONCURRENCY) as i64;
    let started = Instant::now();
    send_likes(&bus, n, |bus, vote| {
        Box::pin(async move { bus.send(&vote).await.map(|_| ()) })
    })
    .await?;
    let sent = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while likes(db).await? < expected {
        if Instant::now() > deadline {
            return Err("likes through JetStream: not all applied after 120 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    consumers.shutdown().await;
    app.dispatcher().shutdown().await;
    Ok((
        expected as f64 / elapsed.as_secs_f64(),
        expected as f64 / sent.as_secs_f64(),
    ))
}

/// B drain: N commands already queued, then one worker applies them.
async fn drain(db: &Database, n: u32) -> Result<f64, String> {
    let producer = App::builder(db.clone(), registry())
        .delivery(options())
        .relay(false)
        .start();
    send_all(&producer, n).await?;
    let worker = App::builder(db.clone(), registry())
        .delivery(options())
        .start();
    let started = Instant::now();
    while !worker
        .wait_until_delivered(Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?
    {}
    let rate = (n as usize / CONCURRENCY * CONCURRENCY) as f64 / started.elapsed().as_secs_f64();
    worker.dispatcher().shutdown().await;
    Ok(rate)
}

pub async fn run(url: &str, n: u32) -> Result<Report, String> {
    let db = DatabaseOptions::new(url)
        .max_connections(CONCURRENCY as u32 + 4)
        .connect::<sqlx::Postgres>()
        .await
        .map_err(|e| e.to_string())?;
    db.migrate().await.map_err(|e| e.to_string())?;
    let expected = (n as usize / CONCURRENCY * CONCURRENCY) as i64;
    let admin = crate::common::raw_pool(url, 1).await?;

    reset(&admin).await?;
    let base = baseline(url).await?;
    reset(&admin).await?;
    let (a, a_retries) = direct(&db, n).await?;
    let a_likes = likes(&db).await?;
    reset(&admin).await?;
    let (b, b_accept) = bus(&db, n).await?;
    let b_likes = likes(&db).await?;
    reset(&admin).await?;
    let b_drain = drain(&db, n).await?;
    let drained = likes(&db).await?;
    reset(&admin).await?;
    let (c, c_send) = through_broker(&db, n).await?;
    let c_likes = likes(&db).await?;
    if a_likes != expected || b_likes != expected || drained != expected || c_likes != expected {
        return Err(format!(
            "wrong counts: A={a_likes} B={b_likes} drain={drained} C={c_likes}, \
             expected {expected}"
        ));
    }

    println!("likes: {expected} likes of one post, {CONCURRENCY} concurrent clients, PostgreSQL\n");
    println!("{:<58} {:>12} {:>10}", "", "likes/s", "vs base");
    let rows = [
        (
            "baseline: raw sqlx SELECT … FOR UPDATE; UPDATE (pgbench)",
            base,
        ),
        ("A: unit of work + row lock per like", a),
        ("B: bus, end to end (send + apply, batches of 100)", b),
        (
            "B: bus, sending only (one small transaction per like)",
            b_accept,
        ),
        ("B: bus, draining commands already queued", b_drain),
        (
            "C: bus over JetStream, end to end (send + accept + apply)",
            c,
        ),
        (
            "C: bus over JetStream, sending only (published, acked)",
            c_send,
        ),
    ];
    for (name, rate) in rows {
        println!("{name:<58} {rate:>12.0} {:>9.2}x", rate / base);
    }
    println!(
        "\nA retries: {a_retries}; goal: B ≥ 5× baseline (end to end: {:.1}×); \
         C through JetStream ≥ 5× (end to end: {:.1}×)",
        b / base,
        c / base
    );

    let mut report = Report::new("likes");
    report.set("likes", expected as f64);
    report.set("baseline_per_s", base);
    report.set("a_per_s", a);
    report.set("b_per_s", b);
    report.set("b_send_per_s", b_accept);
    report.set("b_drain_per_s", b_drain);
    report.set("b_vs_baseline", b / base);
    report.set("b_vs_a", b / a);
    report.set("b_drain_vs_baseline", b_drain / base);
    report.set("c_per_s", c);
    report.set("c_send_per_s", c_send);
    report.set("c_vs_baseline", c / base);
    Ok(report)
}
