//! Commands over JetStream: sent straight to the broker by a `CommandBus` (no database
//! commit each), or inside a unit of work and passed on by a forwarder; consumed by another
//! service whose instances share the partitions of the command's subject.

use std::process::Child;
use std::time::{Duration, Instant};

use keel::nats::{CommandBus, ConsumerOptions, Consumers, Forwarder, JetStream, StreamOptions};
use keel::{Command, Error, sqlx};
use serde::{Deserialize, Serialize};

use super::support::*;
use super::{App, Database, Handler, HandlerContext, Registry};

/// A like: commutes with every other like of its post, so only one at a time per post.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LikePost {
    pub post_id: i64,
    pub user_id: i64,
}

impl Command for LikePost {
    const NAME: &'static str = "test.like_post.v1";
    fn key(&self) -> Option<String> {
        Some(format!("post:{}", self.post_id))
    }
    const ORDERED: bool = false;
}

async fn count_likes(likes: &[LikePost], ctx: &mut HandlerContext) -> Result<(), Error> {
    let (post_id, n) = (likes[0].post_id, likes.len() as i64);
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

/// One instance of the `likes` service.
fn likes_service(db: &Database, broker: &JetStream) -> (App, Consumers) {
    let mut registry = Registry::new();
    registry
        .register(Handler::command_batch::<LikePost, _>(
            "count_likes",
            100,
            count_likes,
        ))
        .unwrap();
    let app = App::builder(db.clone(), registry).delivery(quick()).start();
    let consumers = Consumers::start(
        app.dispatcher(),
        broker.clone(),
        ConsumerOptions::new("likes"),
        &["count_likes"],
    )
    .unwrap();
    (app, consumers)
}

/// 10,000 likes of one post sent at once by 16 senders straight to the broker, counted by
/// two instances of the service: the count is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_likes_through_the_broker_count_exactly() {
    const SENDERS: i64 = 16;
    const LIKES: i64 = 10_000;
    let Some(broker) = broker().await else { return };
    let db = database().await;
    let db = db.database();
    db.execute_script(
        "CREATE TABLE posts (id BIGINT PRIMARY KEY, likes BIGINT NOT NULL);
         INSERT INTO posts VALUES (1, 0);",
    )
    .await
    .unwrap();
    let instances = [likes_service(db, &broker), likes_service(db, &broker)];
    let bus = CommandBus::new(broker.clone());
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let bus = bus.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..LIKES / SENDERS {
                let like = LikePost {
                    post_id: 1,
                    user_id: sender * LIKES + n,
                };
                bus.send(&like).await.unwrap();
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let likes = until(db, "SELECT likes FROM posts WHERE id = 1", LIKES).await;
    assert_eq!(likes, LIKES, "every like counted once");
    for (app, _) in &instances {
        assert!(
            app.wait_until_delivered(Duration::from_secs(30))
                .await
                .unwrap()
        );
    }
    assert_eq!(
        scalar(db, "SELECT likes FROM posts WHERE id = 1").await,
        LIKES,
        "nothing counted twice"
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(*) FROM keel_done WHERE handler = 'count_likes'"
        )
        .await,
        LIKES
    );
    for (app, consumers) in instances {
        consumers.shutdown().await;
        app.shutdown().await.unwrap();
    }
}

/// A step of a sequence that must run in order, per sequence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub sequence: i64,
    pub seq: i64,
}

impl Command for Step {
    const NAME: &'static str = "test.step.v1";
    fn key(&self) -> Option<String> {
        Some(format!("sequence:{}", self.sequence))
    }
}

async fn apply_step(step: &Step, ctx: &mut HandlerContext) -> Result<(), Error> {
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO applied (sequence, seq, pid) VALUES ($1, $2, $3)")
            .bind(step.sequence)
            .bind(step.seq)
            .bind(i64::from(std::process::id()))
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

const DATABASE: &str = "KEEL_NATS_STEPS_DATABASE";
const STREAM: &str = "KEEL_NATS_STEPS_STREAM";
const TOTAL: &str = "KEEL_NATS_STEPS_TOTAL";
const SEQUENCES: i64 = 20;
const STEPS: i64 = 40;

fn stream_options(stream: &str) -> StreamOptions {
    StreamOptions::default()
        .name(stream)
        .prefix(stream.to_lowercase())
        .ack_wait(Duration::from_secs(5))
}

/// The child: one instance of the `steps` service, until every step is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of per_key_order_holds_across_four_consumer_processes"]
async fn child() {
    let (Ok(url), Ok(stream), Ok(total)) = (
        std::env::var(DATABASE),
        std::env::var(STREAM),
        std::env::var(TOTAL),
    ) else {
        return;
    };
    let total: i64 = total.parse().unwrap();
    let nats = std::env::var("KEEL_TEST_NATS_URL").unwrap();
    let broker = JetStream::connect(&nats, stream_options(&stream))
        .await
        .unwrap();
    let db = Database::connect(&url).await.unwrap();
    let mut registry = Registry::new();
    registry
        .register(Handler::command::<Step, _>("apply_step", apply_step))
        .unwrap();
    let app = App::builder(db.clone(), registry).delivery(quick()).start();
    let consumers = Consumers::start(
        app.dispatcher(),
        broker,
        ConsumerOptions::new("steps"),
        &["apply_step"],
    )
    .unwrap();
    let started = Instant::now();
    while scalar(&db, "SELECT COUNT(*) FROM applied").await < total {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "steps still missing after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumers.shutdown().await;
    app.shutdown().await.unwrap();
}

/// Twenty sequences of forty steps: half sent straight to the broker one after another,
/// half sent inside units of work and forwarded. Four processes of the consuming service
/// apply them: each step once, each sequence in order, and more than one process at work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_across_four_consumer_processes() {
    let Some(_turn) = broker().await else { return };
    let nats = std::env::var("KEEL_TEST_NATS_URL").unwrap();
    let stream = format!("STEPS{}", uuid::Uuid::now_v7().simple());
    let broker = JetStream::connect(&nats, stream_options(&stream))
        .await
        .unwrap();
    let (steps_database, producer_database) = (database().await, database().await);
    let (steps_db, producer_db) = (steps_database.database(), producer_database.database());
    // `n` numbers the steps in the order they were applied.
    let schema = if steps_db.url().starts_with("sqlite") {
        "CREATE TABLE applied (n INTEGER PRIMARY KEY AUTOINCREMENT, sequence BIGINT NOT NULL,
                               seq BIGINT NOT NULL, pid BIGINT NOT NULL)"
    } else {
        "CREATE TABLE applied (n BIGSERIAL PRIMARY KEY, sequence BIGINT NOT NULL,
                               seq BIGINT NOT NULL, pid BIGINT NOT NULL)"
    };
    steps_db.execute_script(schema).await.unwrap();
    let total = SEQUENCES * STEPS;
    let mut children: Vec<Child> = (0..4)
        .map(|_| {
            spawn_child(
                module_path!(),
                &[
                    (DATABASE, steps_db.url().to_owned()),
                    (STREAM, stream.clone()),
                    (TOTAL, total.to_string()),
                ],
            )
        })
        .collect();

    let mut registry = Registry::new();
    registry
        .register(Forwarder::new(broker.clone()).command::<super::B, Step>())
        .unwrap();
    let producer = App::builder(producer_db.clone(), registry)
        .delivery(quick())
        .start();
    let bus = CommandBus::new(broker.clone());
    let mut senders = Vec::new();
    for sequence in 0..SEQUENCES {
        let (bus, producer) = (bus.clone(), producer.clone());
        senders.push(tokio::spawn(async move {
            for seq in 0..STEPS {
                let step = Step { sequence, seq };
                if sequence % 2 == 0 {
                    bus.send(&step).await.unwrap();
                } else {
                    producer
                        .session()
                        .unit_of_work(async |tx| tx.send(step.clone()))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    for child in &mut children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a child failed: {status}");
    }
    producer.shutdown().await.unwrap();

    let mut conn = steps_db.acquire().await.unwrap();
    let applied: Vec<(i64, i64)> = sqlx::query_as("SELECT sequence, seq FROM applied ORDER BY n")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(applied.len() as i64, total, "a step is missing or doubled");
    for sequence in 0..SEQUENCES {
        let order: Vec<i64> = applied
            .iter()
            .filter(|(s, _)| *s == sequence)
            .map(|(_, seq)| *seq)
            .collect();
        assert_eq!(
            order,
            (0..STEPS).collect::<Vec<_>>(),
            "sequence {sequence} ran out of order"
        );
    }
    let processes = scalar(steps_db, "SELECT COUNT(DISTINCT pid) FROM applied").await;
    assert!(processes >= 2, "one process did all the work");
}
