//! Leases, due times and retry times are the database's: a relay whose process clock is
//! wrong by minutes neither steals a live lease nor runs a retry early or late; a process
//! ten minutes ahead that dies holds its lease only its term; a fast-path lease counts from
//! the commit, not from `BEGIN`.
//!
//! The skew is real: relays run in child processes started under libfaketime
//! (`KEEL_TEST_FAKETIME` names the library; `scripts/test.sh` installs and sets it), one
//! ten minutes ahead and one ten minutes behind, while this process delivers with its
//! true clock. PostgreSQL only: SQLite's clock is the machine's, shared by every process
//! that opens the file.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel::postgres::{App, Database, Handler, HandlerContext, Registry};
use keel::{DeliveryOptions, DomainEvent, Error, RetryPolicy, sqlx};
use keel_testing::TestDatabase;
use serde::{Deserialize, Serialize};

type B = sqlx::Postgres;

const CHILD_URL: &str = "KEEL_SKEW_CHILD_URL";
const FAKETIME: &str = "KEEL_TEST_FAKETIME";

/// A unit event of these tests, on the `Clock` aggregate.
macro_rules! clock_event {
    ($name:ident, $event:literal) => {
        #[derive(Debug, Serialize, Deserialize)]
        struct $name;

        impl DomainEvent for $name {
            const NAME: &'static str = $event;
            const AGGREGATE_TYPE: &'static str = "Clock";
            fn aggregate_id(&self) -> String {
                stringify!($name).to_lowercase()
            }
        }
    };
}

clock_event!(Slow, "test.slow.v1");

clock_event!(Flaky, "test.flaky.v1");

/// Records which process ran which handler, at the database's time.
async fn record(ctx: &mut HandlerContext, handler: &str) -> Result<(), Error> {
    let who = std::env::var(CHILD_URL).map_or("parent", |_| "child");
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO calls (handler, who, at) VALUES ($1, $2, clock_timestamp())")
            .bind(handler)
            .bind(who)
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

/// Runs for three seconds, well inside its lease.
async fn slow(_: &Slow, ctx: &mut HandlerContext) -> Result<(), Error> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    record(ctx, "slow").await
}

/// Fails its first attempt; retried one second later.
async fn flaky(_: &Flaky, ctx: &mut HandlerContext) -> Result<(), Error> {
    if ctx.attempt() == 1 {
        return Err(Error::external("the first attempt fails"));
    }
    record(ctx, "flaky").await
}

fn registry() -> Registry {
    let retry = RetryPolicy::default()
        .max_attempts(3)
        .base_delay(Duration::from_secs(1))
        .max_delay(Duration::from_secs(1))
        .jitter(0.0);
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<Slow, _>("slow", slow))
        .unwrap()
        .register(Handler::new::<Flaky, _>("flaky", flaky).retry(retry))
        .unwrap();
    registry
}

fn options() -> DeliveryOptions {
    DeliveryOptions::default()
        .lease(Duration::from_secs(10))
        .handler_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(50))
}

/// The child: a relay with a skewed clock, for six seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_skewed_relay_follows_the_database_clock"]
async fn skewed_relay() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let db = Database::connect(&url).await.unwrap();
    let app = App::builder(db, registry()).delivery(options()).start();
    tokio::time::sleep(Duration::from_secs(6)).await;
    app.shutdown().await.unwrap();
}

/// Runs the ignored test `child` of this module in a process whose clock is off by `offset`.
fn spawn_child(child: &str, url: &str, faketime: &str, offset: &str) -> Child {
    let (_crate_name, module) = module_path!().split_once("::").unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            &format!("{module}::{child}"),
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env("LD_PRELOAD", faketime)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// What a clock-skew test needs: the faketime library's path (`None`, skipping the test,
/// when it is not set, which the README's test command never leaves unset) and a database
/// with the `calls` table the handlers write to.
async fn skew_setup() -> Option<(String, TestDatabase<B>)> {
    let Ok(faketime) = std::env::var(FAKETIME) else {
        assert!(
            std::env::var(keel_testing::REQUIRE_POSTGRES_VAR).as_deref() != Ok("1"),
            "{FAKETIME} is not set; run the suite with `bash scripts/test.sh`, which installs \
             faketime and sets it"
        );
        eprintln!("note: {FAKETIME} is not set; skipping the clock-skew test");
        return None;
    };
    let test_db = TestDatabase::<B>::new().await?;
    test_db
        .database()
        .execute_script("CREATE TABLE calls (handler TEXT, who TEXT, at TIMESTAMPTZ)")
        .await
        .unwrap();
    Some((faketime, test_db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_relay_follows_the_database_clock() {
    let Some((faketime, test_db)) = skew_setup().await else {
        return;
    };
    let db = test_db.database().clone();
    // This process delivers on its fast path only: no relay.
    let app = App::builder(db.clone(), registry())
        .delivery(options())
        .relay(false)
        .start();
    let mut session = app.session();
    session
        .unit_of_work(async |tx| {
            tx.record(Slow)?;
            tx.record(Flaky)?;
            Ok(())
        })
        .await
        .unwrap();
    // Ten minutes ahead: with its own clock, it would find the live lease expired.
    let url = db.url().to_owned();
    let mut ahead = spawn_child("skewed_relay", &url, &faketime, "+600s");
    // Ten minutes behind: with its own clock, it would wait ten minutes for the retry.
    let mut behind = spawn_child("skewed_relay", &url, &faketime, "-600s");
    assert!(ahead.wait().unwrap().success(), "the child ahead failed");
    assert!(behind.wait().unwrap().success(), "the child behind failed");
    app.dispatcher().wait_idle().await;

    let mut conn = db.acquire().await.unwrap();
    let slow_runs: Vec<String> = sqlx::query_scalar("SELECT who FROM calls WHERE handler = 'slow'")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(slow_runs, ["parent"], "the live lease was taken over");
    let slow_attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM keel_done WHERE handler = 'slow'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(
        slow_attempts, 1,
        "a relay claimed the delivery while its lease held"
    );
    let (who, delay_ms): (String, f64) = sqlx::query_as(
        "SELECT c.who, (EXTRACT(EPOCH FROM c.at - r.failed_at) * 1000)::float8
         FROM calls c, keel_delivery_errors r
         WHERE c.handler = 'flaky' AND r.handler = 'flaky'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(who, "child");
    assert!(
        (900.0..4_000.0).contains(&delay_ms),
        "the retry ran {delay_ms} ms after the failure; it was due after 1,000 ms"
    );
    drop(conn);
    app.shutdown().await.unwrap();
}

clock_event!(Parked, "test.parked.v1");

/// Holds its delivery (and so its lease) for a while.
async fn parked(_: &Parked, _: &mut HandlerContext) -> Result<(), Error> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(())
}

/// A fast-path lease counts from the commit, not from `BEGIN`: a unit of work that took
/// three seconds leaves its delivery the whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_path_lease_counts_from_the_commit() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<Parked, _>("parked", parked))
        .unwrap();
    let app = App::builder(db.clone(), registry)
        .delivery(options())
        .relay(false)
        .start();
    app.session()
        .unit_of_work(async |tx| {
            tx.record(Parked)?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(())
        })
        .await
        .unwrap();
    let mut conn = db.acquire().await.unwrap();
    let left: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM leased_until - clock_timestamp())::float8
         FROM keel_deliveries WHERE handler = 'parked'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    assert!(
        left > 9.0,
        "{left:.1} s of a 10 s lease left right after the commit"
    );
    app.shutdown().await.unwrap();
}

clock_event!(Orphaned, "test.orphaned.v1");

/// In the child, the process dies while delivering; in this process, it records.
async fn orphaned(_: &Orphaned, ctx: &mut HandlerContext) -> Result<(), Error> {
    if std::env::var(CHILD_URL).is_ok() {
        std::process::abort();
    }
    record(ctx, "orphaned").await
}

fn orphan_app(db: Database, relay: bool) -> App {
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<Orphaned, _>("orphaned", orphaned))
        .unwrap();
    let options = DeliveryOptions::default()
        .lease(Duration::from_secs(2))
        .handler_timeout(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(50));
    App::builder(db, registry)
        .delivery(options)
        .relay(relay)
        .start()
}

/// The child: a producer ten minutes ahead that dies delivering on its fast path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_skewed_process_that_dies_holds_its_lease_only_its_term"]
async fn skewed_producer_that_dies() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let db = Database::connect(&url).await.unwrap();
    let app = orphan_app(db, false);
    app.session()
        .unit_of_work(async |tx| {
            tx.record(Orphaned)?;
            Ok(())
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    unreachable!("the handler aborts the process");
}

/// A process ten minutes ahead dies holding a fast-path lease of 2 s: a relay with the
/// true clock delivers after about 2 s, not ten minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_process_that_dies_holds_its_lease_only_its_term() {
    let Some((faketime, test_db)) = skew_setup().await else {
        return;
    };
    let db = test_db.database().clone();
    let url = db.url().to_owned();
    let mut child = spawn_child("skewed_producer_that_dies", &url, &faketime, "+600s");
    assert!(!child.wait().unwrap().success(), "the child was to die");
    let started = std::time::Instant::now();
    let app = orphan_app(db.clone(), true);
    assert!(
        app.wait_until_delivered(Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "delivered {:?} after the death; the lease was 2 s",
        started.elapsed()
    );
    let mut conn = db.acquire().await.unwrap();
    let who: String = sqlx::query_scalar("SELECT who FROM calls WHERE handler = 'orphaned'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(who, "parent");
    app.shutdown().await.unwrap();
}
