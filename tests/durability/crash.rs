//! kill -9: a child process commits 10,000 events whose two handlers write to a table,
//! and is killed at random moments, again and again, then restarted until it finishes.
//! Every (event, handler) effect must exist exactly once.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel::DeliveryOptions;

use super::support::*;
use super::{App, B, Database};

const EVENTS: i64 = 10_000;
const KILLS: usize = 20;
const CHILD_URL: &str = "KEEL_CRASH_CHILD_URL";
const CHILD_PACED: &str = "KEEL_CRASH_CHILD_PACED";

/// The child: produce what is left, deliver everything (fast path and relay), exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of kill_9_loses_nothing_and_doubles_nothing"]
async fn child() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let db = Database::connect(&url).await.unwrap();
    let options = DeliveryOptions::default()
        .poll_interval(Duration::from_millis(20))
        .handler_timeout(Duration::from_millis(500))
        .lease(Duration::from_secs(1));
    let app = App::builder(db, both_effects()).delivery(options).start();
    let mut producer = app.database().clone();
    if std::env::var(CHILD_PACED).is_ok() {
        produce_paced(&mut producer).await;
    } else {
        produce(&mut producer, EVENTS, 25).await.unwrap();
    }
    while !app
        .wait_until_delivered(Duration::from_secs(60))
        .await
        .unwrap()
    {}
    app.shutdown().await.unwrap();
}

/// What is left of the events, 25 per unit of work and one unit every 40 ms at most, for
/// the children that are killed: they then outlive `KILLS` kills however idle the machine
/// (unpaced, a child alone on the machine produced all 10,000 before the 18th kill).
async fn produce_paced(db: &mut Database) {
    loop {
        let produced = scalar(db, "SELECT produced FROM progress").await;
        if produced >= EVENTS {
            return;
        }
        produce(db, (produced + 25).min(EVENTS), 25).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// The exact path of [`child`] in this test binary, for this backend's copy:
/// `durability::postgres::crash::child` or `durability::sqlite::crash::child`.
fn child_test_path() -> String {
    let module = module_path!();
    let (_crate_name, path) = module
        .split_once("::")
        .expect("a module inside the test crate");
    format!("{path}::child")
}

/// A child; `paced`, one that is to be killed (see [`produce_paced`]).
fn spawn_child(url: &str, paced: bool) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if paced {
        command.env(CHILD_PACED, "1");
    }
    command
        .args([
            "--ignored",
            "--exact",
            &child_test_path(),
            "--test-threads=1",
            // A panic's message straight to stderr: captured, libtest would print it on
            // stdout, which is discarded.
            "--nocapture",
        ])
        .env(CHILD_URL, url)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        // A child that fails says why (panics only: its logs are off).
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn kill_9_loses_nothing_and_doubles_nothing(db: Database) {
    // The pass with a pool of one connection checks that nothing inside a unit of work
    // needs a second one; this test nests nothing, and it is the pass's slowest by far.
    if std::env::var(keel_testing::POOL_SIZE_VAR).as_deref() == Ok("1") {
        eprintln!("note: the kill -9 test runs in the main pass only; skipped with a pool of one");
        return;
    }
    let _turn = crate::turns::Turn::take();
    schema(&db).await;
    let url = db.url().to_owned();
    let mut kills = 0;
    while kills < KILLS {
        let mut child = spawn_child(&url, true);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(150..900))).await;
        if child.try_wait().unwrap().is_some() {
            break; // finished before being killed
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    let produced_when_killing_stopped = scalar(&db, "SELECT produced FROM progress").await;
    let started = Instant::now();
    loop {
        let status = spawn_child(&url, false).wait().unwrap();
        assert!(status.success(), "the child failed: {status}");
        if scalar(&db, "SELECT produced FROM progress").await == EVENTS {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
    }
    eprintln!(
        "kill -9: {kills} kills, {produced_when_killing_stopped} events produced by then, \
         recovery took {:?}",
        started.elapsed()
    );
    assert!(kills >= KILLS, "the child finished before {KILLS} kills");
    exactly_once(&db, EVENTS, 2).await;
}

keel_testing::backend_tests!(kill_9_loses_nothing_and_doubles_nothing);
