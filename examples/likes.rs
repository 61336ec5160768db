//! 1000 people like the same post at the same moment.
//!
//! - **A, direct**: each request runs its own unit of work that locks the post's row, reads
//!   the count and writes it back. Correct, but every request queues on one row.
//! - **B, bus**: each request sends a `VoteForPost` command (instant: one insert); workers
//!   take the votes of one post in batches of up to 100 and apply each batch in one unit of
//!   work (`likes = likes + n`). Commands with the same key (the post) never run at the same
//!   time, so the row sees no contention at all.
//!
//! ```text
//! cargo run --example likes                 # SQLite, no setup
//! DATABASE_URL=postgres://… cargo run --example likes
//! cargo run --example likes -- 5000         # another number of likes
//! ```
//!
//! The backend is a type (`sqlx::Postgres` or `sqlx::Sqlite`). A service on one backend
//! names it once, through `keel::postgres::{App, Database, …}`; this example runs on either,
//! so `main` picks the type from the URL's scheme and the rest is written once, generic
//! over `B: Posts` (the example's SQL, implemented for both drivers).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel::sqlx::{self, Postgres, Sqlite};
use keel::{
    App, Backend, Command, Database, DatabaseOptions, DeliveryOptions, Error, HandlerContext,
    Registry, RowLock, UnitOfWorkOptions,
};
use serde::{Deserialize, Serialize};

/// A user likes a post; keyed by post.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VoteForPost {
    post_id: i64,
    user_id: i64,
}

impl Command for VoteForPost {
    const NAME: &'static str = "example.vote_for_post.v1";
    fn key(&self) -> Option<String> {
        Some(format!("post:{}", self.post_id))
    }
    // Likes commute: one at a time per post is enough, in any order, so a burst of likes
    // on one post is sent without queueing behind each other's commits.
    const ORDERED: bool = false;
}

/// The example's SQL, on the driver's own connection. The statements read the same on
/// both backends, but each sqlx driver is a type of its own: `posts!` below implements
/// them for each, so that the code generic over `B` needs no sqlx bounds (executor,
/// `i64` encoding) on every function.
trait Posts: Backend {
    /// Recreates `posts` with post 1 at 0 likes, and empties Keel's outbox.
    fn reset(db: &Database<Self>) -> impl Future<Output = Result<(), Error>> + Send;
    /// `likes = likes + n` for one post.
    fn add_likes(
        conn: &mut Self::Connection,
        post_id: i64,
        n: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// The likes of post 1.
    fn likes(conn: &mut Self::Connection) -> impl Future<Output = Result<i64, Error>> + Send;
    /// Sets the likes of post 1.
    fn set_likes(
        conn: &mut Self::Connection,
        likes: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Failed delivery attempts recorded by Keel.
    fn failed_attempts(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<i64, Error>> + Send;
}

macro_rules! posts {
    ($backend:ty) => {
        impl Posts for $backend {
            async fn reset(db: &Database<Self>) -> Result<(), Error> {
                db.execute_script(
                    "DROP TABLE IF EXISTS posts;
                     CREATE TABLE posts (id BIGINT PRIMARY KEY, likes BIGINT NOT NULL);
                     INSERT INTO posts VALUES (1, 0);
                     DELETE FROM keel_delivery_errors;
                     DELETE FROM keel_deliveries;
                     DELETE FROM keel_done;
                     DELETE FROM keel_events;
                     DELETE FROM keel_keys;",
                )
                .await
            }

            async fn add_likes(
                conn: &mut Self::Connection,
                post_id: i64,
                n: i64,
            ) -> Result<(), Error> {
                sqlx::query("UPDATE posts SET likes = likes + $1 WHERE id = $2")
                    .bind(n)
                    .bind(post_id)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            async fn likes(conn: &mut Self::Connection) -> Result<i64, Error> {
                let (likes,): (i64,) = sqlx::query_as("SELECT likes FROM posts WHERE id = 1")
                    .fetch_one(conn)
                    .await?;
                Ok(likes)
            }

            async fn set_likes(conn: &mut Self::Connection, likes: i64) -> Result<(), Error> {
                sqlx::query("UPDATE posts SET likes = $1 WHERE id = 1")
                    .bind(likes)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            async fn failed_attempts(conn: &mut Self::Connection) -> Result<i64, Error> {
                let (failed,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM keel_delivery_errors")
                    .fetch_one(conn)
                    .await?;
                Ok(failed)
            }
        }
    };
}

posts!(Postgres);
posts!(Sqlite);

/// Applies up to 100 votes of one post in one unit of work.
async fn count_votes<B: Posts>(
    votes: &[VoteForPost],
    ctx: &mut HandlerContext<B>,
) -> Result<(), Error> {
    let (post_id, n) = (votes[0].post_id, votes.len() as i64);
    ctx.unit_of_work(async |tx| B::add_likes(tx.conn(), post_id, n).await)
        .await
}

// One registration per backend; `Registry::<B>::global()` keeps backend B's.
keel::register_command_handler!(VoteForPost => count_votes::<Postgres>, batch = 100);
keel::register_command_handler!(VoteForPost => count_votes::<Sqlite>, batch = 100);

struct Outcome {
    likes: i64,
    elapsed: Duration,
    retries: u32,
    conflicts: u32,
}

async fn likes<B: Posts>(db: &Database<B>) -> Result<i64, Error> {
    let mut conn = db.acquire().await?;
    B::likes(&mut conn).await
}

/// A: one unit of work per like, with a row lock.
async fn direct<B: Posts>(db: &Database<B>, users: i64) -> Result<Outcome, Error> {
    B::reset(db).await?;
    let retries = Arc::new(AtomicU32::new(0));
    let conflicts = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut requests = Vec::new();
    for _ in 0..users {
        let (mut db, retries, conflicts) = (db.clone(), retries.clone(), conflicts.clone());
        requests.push(tokio::spawn(async move {
            let (retries, conflicts) = (&retries, &conflicts);
            let options = UnitOfWorkOptions::named("like").lock_timeout(Duration::from_secs(5));
            db.unit_of_work_with(&options, async |tx| {
                if tx.attempt() == 2 {
                    conflicts.fetch_add(1, Ordering::Relaxed);
                }
                if tx.attempt() > 1 {
                    retries.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tx.lock(RowLock::for_update("posts", 1)).await?;
                let likes = B::likes(tx.conn()).await?;
                B::set_likes(tx.conn(), likes + 1).await
            })
            .await
            .map(|receipt| receipt.into_value())
        }));
    }
    for request in requests {
        request.await.expect("request task")?;
    }
    Ok(Outcome {
        likes: likes(db).await?,
        elapsed: started.elapsed(),
        retries: retries.load(Ordering::Relaxed),
        conflicts: conflicts.load(Ordering::Relaxed),
    })
}

/// B: send a command per like; workers apply them in batches.
async fn bus<B: Posts>(
    db: &Database<B>,
    registry: Registry<B>,
    users: i64,
) -> Result<(Outcome, Duration), Error> {
    B::reset(db).await?;
    let options = DeliveryOptions::default().poll_interval(Duration::from_millis(50));
    let app = App::builder(db.clone(), registry).delivery(options).start();
    let started = Instant::now();
    let mut requests = Vec::new();
    for user_id in 0..users {
        let app = app.clone();
        requests.push(tokio::spawn(async move {
            app.session()
                .send(VoteForPost {
                    post_id: 1,
                    user_id,
                })
                .await
        }));
    }
    for request in requests {
        request.await.expect("request task")?;
    }
    let sent = started.elapsed();
    while !app.wait_until_delivered(Duration::from_secs(60)).await? {}
    let elapsed = started.elapsed();
    let failed = B::failed_attempts(&mut *db.acquire().await?).await?;
    // Not `app.shutdown()`, which would also close the pool `db` shares.
    app.dispatcher().shutdown().await;
    let outcome = Outcome {
        likes: likes(db).await?,
        elapsed,
        retries: failed as u32,
        conflicts: failed as u32,
    };
    Ok((outcome, sent))
}

fn rate(outcome: &Outcome) -> f64 {
    outcome.likes as f64 / outcome.elapsed.as_secs_f64()
}

/// Both ways on backend `B`, and the comparison.
async fn run<B: Posts>(url: String, users: i64) -> Result<(), Box<dyn std::error::Error>> {
    let db = DatabaseOptions::new(url)
        .max_connections(16)
        .connect::<B>()
        .await?;
    db.migrate().await?;
    println!(
        "{users} users like post 1 at the same moment ({}, {})\n",
        B::NAME,
        db.url()
    );

    let a = direct(&db, users).await?;
    let (b, sent) = bus(&db, Registry::global()?, users).await?;
    println!(
        "{:<34} {:>7} {:>10} {:>10} {:>8} {:>10}",
        "", "likes", "elapsed", "likes/s", "retries", "conflicts"
    );
    for (name, o) in [
        ("A  unit of work + row lock", &a),
        ("B  bus + workers + batches", &b),
    ] {
        println!(
            "{name:<34} {:>7} {:>8.0}ms {:>10.0} {:>8} {:>10}",
            o.likes,
            o.elapsed.as_secs_f64() * 1e3,
            rate(o),
            o.retries,
            o.conflicts
        );
    }
    let applying = b.elapsed.saturating_sub(sent);
    println!(
        "\nB accepted all {users} requests in {:.0} ms (a send is one small transaction), \
         then applied the last ones {:.0} ms later.\nB/A throughput: {:.1}x",
        sent.as_secs_f64() * 1e3,
        applying.as_secs_f64() * 1e3,
        rate(&b) / rate(&a)
    );
    if a.likes != users || b.likes != users {
        return Err(format!("expected {users} likes, got A={} B={}", a.likes, b.likes).into());
    }
    db.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let users: i64 = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("`{n}` is not a number of likes"))?,
        None => 1000,
    };
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let file = std::env::temp_dir().join("keel-likes.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            format!("sqlite:{}", file.display())
        }
    };
    // The one place the backend is chosen.
    if url.starts_with("sqlite:") {
        run::<Sqlite>(url, users).await
    } else {
        run::<Postgres>(url, users).await
    }
}
