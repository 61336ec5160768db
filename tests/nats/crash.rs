//! Services in processes of their own. kill -9 on both sides of the broker: a producing
//! service forwarding 10,000 events and a consuming service accepting them are each killed
//! at random moments, again and again, then run to the end. Four processes of one consuming
//! service share its work. Every (event, handler) effect must exist exactly once.

use std::process::Child;
use std::time::{Duration, Instant};

use keel::nats::{ConsumerOptions, Consumers, JetStream, StreamOptions};
use keel::{DeliveryOptions, RetryPolicy, sqlx};

use super::support::*;
use super::{App, B, Database, POSTGRES, Registry};
use keel_testing::TestDatabase;

const EVENTS: i64 = 10_000;
const KILLS: usize = 10;
const ROLE: &str = "KEEL_NATS_CHILD_ROLE";
const DATABASE: &str = "KEEL_NATS_CHILD_DATABASE";
const STREAM: &str = "KEEL_NATS_CHILD_STREAM";
const TOTAL: &str = "KEEL_NATS_CHILD_EVENTS";

fn crash_options() -> DeliveryOptions {
    DeliveryOptions::default()
        .poll_interval(Duration::from_millis(20))
        .handler_timeout(Duration::from_millis(500))
        .lease(Duration::from_secs(1))
}

/// The child: `orders` records what is left of the events and forwards everything;
/// `billing` accepts and handles until every effect exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of kill_9_on_both_sides_loses_nothing_and_doubles_nothing"]
async fn child() {
    let (Ok(role), Ok(url), Ok(stream)) = (
        std::env::var(ROLE),
        std::env::var(DATABASE),
        std::env::var(STREAM),
    ) else {
        return;
    };
    let nats = std::env::var("KEEL_TEST_NATS_URL").unwrap();
    let total: i64 = std::env::var(TOTAL).map_or(EVENTS, |n| n.parse().unwrap());
    let broker = JetStream::connect(&nats, stream_options(&stream))
        .await
        .unwrap();
    let db = Database::connect(&url).await.unwrap();
    if role == "orders" {
        let app = producer_with(&db, &broker, crash_options());
        produce(&app, total).await;
        while !app
            .wait_until_delivered(Duration::from_secs(60))
            .await
            .unwrap()
        {}
        app.shutdown().await.unwrap();
    } else {
        let app = App::builder(db.clone(), billing_handlers())
            .delivery(crash_options())
            .start();
        let options = ConsumerOptions::new("billing").batch(50);
        let consumers =
            Consumers::start(app.dispatcher(), broker, options, &["effect_a", "effect_b"]).unwrap();
        let started = Instant::now();
        while scalar(&db, "SELECT COUNT(*) FROM effects").await < total * 2 {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "billing: effects still missing after 240 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        consumers.shutdown().await;
        app.shutdown().await.unwrap();
    }
}

fn prefix(stream: &str) -> String {
    stream.to_lowercase()
}

fn stream_options(stream: &str) -> StreamOptions {
    StreamOptions::default()
        .name(stream)
        .prefix(prefix(stream))
        .ack_wait(Duration::from_secs(2))
}

fn billing_handlers() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(super::Handler::new::<Ticked, _>("effect_a", effect_a).retry(patient()))
        .unwrap();
    registry
        .register(super::Handler::new::<Ticked, _>("effect_b", effect_b).retry(patient()))
        .unwrap();
    registry
}

/// Retries that outlast ten kills: each kill during an attempt counts as one, and a
/// delivery whose attempts all died with their process is dead-lettered (crash-loop
/// protection).
fn patient() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(100)
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(500))
}

/// Records events up to `total`, resuming from the `progress` row so that a crash never
/// produces a number twice, at a steady pace (25 every 40 ms at most): the producing
/// service lives long enough to be killed ten times while it produces, on either backend.
/// On PostgreSQL the row is read locked: a killed process's `COMMIT` may still land after
/// the next process has started, and an unlocked read would number the same events again
/// (SQLite's write lock, taken at `BEGIN`, already serializes them).
async fn produce(app: &App, total: i64) {
    loop {
        let done = app
            .session()
            .unit_of_work(async |tx| {
                let read = if POSTGRES {
                    "SELECT produced FROM progress WHERE id = 1 FOR UPDATE"
                } else {
                    "SELECT produced FROM progress WHERE id = 1"
                };
                let (produced,): (i64,) = sqlx::query_as(read).fetch_one(tx.conn()).await?;
                let upto = (produced + 25).min(total);
                for seq in produced..upto {
                    tx.record(Ticked { seq })?;
                }
                sqlx::query("UPDATE progress SET produced = $1 WHERE id = 1")
                    .bind(upto)
                    .execute(tx.conn())
                    .await?;
                Ok(upto == total)
            })
            .await
            .unwrap();
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

fn spawn(role: &str, db: &Database, stream: &str) -> Child {
    spawn_for(role, db, stream, EVENTS)
}

fn spawn_for(role: &str, db: &Database, stream: &str, total: i64) -> Child {
    spawn_child(
        module_path!(),
        &[
            (ROLE, role.to_owned()),
            (DATABASE, db.url().to_owned()),
            (STREAM, stream.to_owned()),
            (TOTAL, total.to_string()),
        ],
    )
}

/// The databases of `orders` (with its `progress` row) and `billing` (with `effects`).
async fn services() -> (TestDatabase<B>, TestDatabase<B>) {
    let (orders, billing) = (database().await, database().await);
    orders
        .database()
        .execute_script(
            "CREATE TABLE progress (id BIGINT PRIMARY KEY, produced BIGINT NOT NULL);
             INSERT INTO progress VALUES (1, 0);",
        )
        .await
        .unwrap();
    effects_table(billing.database()).await;
    (orders, billing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_both_sides_loses_nothing_and_doubles_nothing() {
    let Some(_turn) = broker().await else { return };
    let (orders_database, billing_database) = services().await;
    let (orders_db, billing_db) = (orders_database.database(), billing_database.database());
    let stream = format!("CRASH{}", uuid::Uuid::now_v7().simple());
    // Each side killed KILLS times (a side that ran to its end is not killed again).
    let mut kills = [0; 2];
    while kills.iter().any(|k| *k < KILLS) {
        let mut children = [
            spawn("orders", orders_db, &stream),
            spawn("billing", billing_db, &stream),
        ];
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1_500))).await;
        let mut killed = false;
        for (child, kills) in children.iter_mut().zip(&mut kills) {
            if *kills < KILLS && child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                *kills += 1;
                killed = true;
            }
            child.wait().unwrap();
        }
        if !killed {
            break;
        }
    }
    let started = Instant::now();
    let mut orders = spawn("orders", orders_db, &stream);
    let mut billing = spawn("billing", billing_db, &stream);
    for child in [&mut orders, &mut billing] {
        let status = child.wait().unwrap();
        assert!(status.success(), "a child failed: {status}");
    }
    eprintln!(
        "kill -9 on both sides: {} and {} kills, recovery took {:?}",
        kills[0],
        kills[1],
        started.elapsed()
    );
    assert!(
        kills.iter().all(|k| *k >= KILLS),
        "each side must be killed {KILLS} times: {kills:?} (one ran to its end first)"
    );
    assert_eq!(
        scalar(orders_db, "SELECT produced FROM progress").await,
        EVENTS
    );
    assert_eq!(
        scalar(orders_db, "SELECT COUNT(*) FROM keel_events").await,
        EVENTS,
        "the producing service recorded some events twice"
    );
    let effects = scalar(billing_db, "SELECT COUNT(*) FROM effects").await;
    if effects != EVENTS * 2 {
        let mut conn = billing_db.acquire().await.unwrap();
        let doubled: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT seq, handler, count(*), min(pid), max(pid) FROM effects
             GROUP BY seq, handler HAVING count(*) > 1 LIMIT 10",
        )
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        panic!(
            "{effects} effects for {} expected; doubled (seq, handler, times, first and \
             last writing process): {doubled:?}",
            EVENTS * 2
        );
    }
    for handler in ["effect_a", "effect_b"] {
        let distinct = if handler == "effect_a" {
            scalar(
                billing_db,
                "SELECT COUNT(DISTINCT seq) FROM effects WHERE handler = 'effect_a'",
            )
            .await
        } else {
            scalar(
                billing_db,
                "SELECT COUNT(DISTINCT seq) FROM effects WHERE handler = 'effect_b'",
            )
            .await
        };
        assert_eq!(
            distinct, EVENTS,
            "{handler}: an effect is missing or doubled"
        );
    }
}

/// Four processes of the consuming service share its durable consumers and its relay's
/// work: each effect once, written by more than one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_consumer_processes_share_the_work() {
    const TOTAL_EVENTS: i64 = 2_000;
    let Some(_turn) = broker().await else { return };
    let (orders_database, billing_database) = services().await;
    let (orders_db, billing_db) = (orders_database.database(), billing_database.database());
    let stream = format!("SHARE{}", uuid::Uuid::now_v7().simple());
    let mut children: Vec<Child> = (0..4)
        .map(|_| spawn_for("billing", billing_db, &stream, TOTAL_EVENTS))
        .collect();
    children.push(spawn_for("orders", orders_db, &stream, TOTAL_EVENTS));
    for child in &mut children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a child failed: {status}");
    }
    assert_eq!(
        scalar(billing_db, "SELECT COUNT(*) FROM effects").await,
        TOTAL_EVENTS * 2
    );
    assert_eq!(
        scalar(
            billing_db,
            "SELECT COUNT(*) FROM (SELECT DISTINCT seq, handler FROM effects) e"
        )
        .await,
        TOTAL_EVENTS * 2,
        "an effect is missing or doubled"
    );
    let processes = scalar(billing_db, "SELECT COUNT(DISTINCT pid) FROM effects").await;
    assert!(processes >= 2, "one process did all the work");
}
