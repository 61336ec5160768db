//! `keel` run as a subprocess against a scripted database, on both backends: one handler
//! done, one failing into the dead letter, one retrying; then `status`, `dead list`,
//! `show`, `retry` and `discard`, checked against the database's state; and the errors a
//! script meets (wrong URL, unmigrated database), none of which shows the password.

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use keel::{
    Admin, App, Backend, DeliveryOptions, DomainEvent, Error, Handler, HandlerContext, Registry,
    RetryPolicy,
};
use keel_testing::{TestBackend, TestDatabase};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A password the PostgreSQL URLs carry (the test server trusts local users, so it is sent
/// nowhere): it must appear in no output.
const PASSWORD: &str = "hunter2-keel-cli";

#[derive(Debug, Serialize, Deserialize)]
struct Noted {
    run: String,
    n: i64,
}

impl DomainEvent for Noted {
    const NAME: &'static str = "cli.noted.v1";
    const AGGREGATE_TYPE: &'static str = "Note";
    fn aggregate_id(&self) -> String {
        self.n.to_string()
    }
}

/// The name of `broken`'s handler: a path, as `register_handler!` names handlers.
const BROKEN: &str = "partner::broken";

/// The runs whose partner is fixed: `broken` fails until its run is in here.
static FIXED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

async fn ok<B: Backend>(_: &Noted, _: &mut HandlerContext<B>) -> Result<(), Error> {
    Ok(())
}

async fn broken<B: Backend>(event: &Noted, _: &mut HandlerContext<B>) -> Result<(), Error> {
    if FIXED.lock().unwrap().contains(&event.run) {
        return Ok(());
    }
    Err(transient(format!("partner refused note {}", event.n)))
}

async fn later<B: Backend>(_: &Noted, _: &mut HandlerContext<B>) -> Result<(), Error> {
    Err(transient("partner busy".into()))
}

/// An error the retry policy retries.
fn transient(message: String) -> Error {
    Error::Database(keel::sqlx::Error::Protocol(message))
}

fn keel(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("DATABASE_URL", url)
        .stdin(Stdio::null())
        .output()
        .expect("the keel binary runs")
}

/// Runs `keel`, checks its exit code, that no output shows the password, and that an
/// error is one line; gives standard output.
fn run(url: &str, args: &[&str], code: i32) -> String {
    let output = keel(url, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert_eq!(
        output.status.code(),
        Some(code),
        "keel {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        !stdout.contains(PASSWORD) && !stderr.contains(PASSWORD),
        "keel {args:?} printed the password:\n{stdout}{stderr}"
    );
    if code != 0 {
        assert_eq!(stderr.lines().count(), 1, "a one-line error: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
    stdout + &stderr
}

fn json(url: &str, args: &[&str]) -> Value {
    let out = run(url, args, 0);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("keel {args:?}: not JSON ({e}): {out}"))
}

fn handler<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["handler"] == name)
        .unwrap_or_else(|| panic!("no handler {name} in {status}"))
}

/// The URL with [`PASSWORD`] in it, on PostgreSQL.
fn with_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.scheme().starts_with("postgres") => {
            parsed.set_password(Some(PASSWORD)).unwrap();
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

async fn wait_for<B: Backend>(admin: &Admin<B>, what: &str, done: impl Fn(&keel::Status) -> bool) {
    for _ in 0..300 {
        if done(&admin.status().await.unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out waiting for {what}: {:?}",
        admin.status().await.unwrap()
    );
}

fn figures(status: &keel::Status, name: &str) -> (i64, i64, i64, i64) {
    let h = status.handlers.iter().find(|h| h.handler == name);
    h.map_or((0, 0, 0, 0), |h| {
        (
            h.pending + h.in_flight,
            h.retrying,
            h.dead,
            h.done_last_minute,
        )
    })
}

async fn scenario<B: TestBackend>() {
    let Some(test) = TestDatabase::<B>::new().await else {
        return;
    };
    let url = with_password(test.url());
    let db = test.database().clone();
    let run_id = keel::EventId::new().to_string();
    let fast = RetryPolicy::default()
        .max_attempts(2)
        .base_delay(Duration::from_millis(10))
        .jitter(0.0);
    let slow = RetryPolicy::default()
        .max_attempts(5)
        .base_delay(Duration::from_secs(3600));
    let mut registry = Registry::<B>::new();
    registry
        .register(Handler::new::<Noted, _>("ok", ok::<B>))
        .unwrap();
    registry
        .register(Handler::new::<Noted, _>(BROKEN, broken::<B>).retry(fast))
        .unwrap();
    registry
        .register(Handler::new::<Noted, _>("later", later::<B>).retry(slow))
        .unwrap();
    let app = App::builder(db.clone(), registry)
        .delivery(DeliveryOptions::default().poll_interval(Duration::from_millis(20)))
        .start();
    for n in 0..3 {
        app.session()
            .unit_of_work(async |tx| {
                tx.record(Noted {
                    run: run_id.clone(),
                    n,
                })
            })
            .await
            .unwrap();
    }
    let admin = Admin::new(db.clone());
    wait_for(&admin, "the scenario", |s| {
        figures(s, "ok").3 == 3 && figures(s, BROKEN).2 == 3 && figures(s, "later").1 == 3
    })
    .await;

    // status
    let status = json(&url, &["status", "--json"]);
    let (ok_row, broken_row, later_row) = (
        handler(&status, "ok"),
        handler(&status, BROKEN),
        handler(&status, "later"),
    );
    assert_eq!(ok_row["message"], "cli.noted.v1");
    assert_eq!(ok_row["done_last_minute"], 3);
    assert_eq!(
        (ok_row["pending"].as_i64(), ok_row["dead"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(broken_row["dead"], 3);
    assert_eq!(later_row["retrying"], 3);
    assert!(later_row["oldest_pending_ms"].as_i64().unwrap() >= 0);
    let pid = i64::from(std::process::id());
    assert!(
        status["relays"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["pid"] == pid),
        "this process's relay reports itself: {status}"
    );
    let text = run(&url, &["status"], 0);
    assert!(text.contains(BROKEN) && text.contains("MESSAGE"), "{text}");

    // dead list and show
    let listed = json(&url, &["dead", "list", "--json", "--handler", BROKEN]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["failures"].as_array().unwrap().len(), 2);
    assert!(
        json(
            &url,
            &["dead", "list", "--json", "--error", "REFUSED NOTE 1"]
        )
        .as_array()
        .is_some_and(|l| l.len() == 1)
    );
    let first = listed[0]["event_id"].as_str().unwrap().to_owned();
    let shown = run(&url, &["dead", "show", &first, "--handler", BROKEN], 0);
    assert!(shown.contains("#1") && shown.contains("#2"), "{shown}");
    assert!(shown.contains("partner refused note"), "{shown}");
    let unknown = keel::EventId::new().to_string();
    run(&url, &["dead", "show", &unknown], 3);
    // A handler named by the end of its name is not found, and the message says its name.
    let partial = run(&url, &["dead", "list", "--handler", "broken"], 0);
    assert!(partial.contains("no dead deliveries"), "{partial}");
    assert!(
        partial.contains("did you mean `partner::broken`"),
        "{partial}"
    );
    let partial = run(&url, &["dead", "show", "--handler", "broken"], 3);
    assert!(
        partial.contains("did you mean `partner::broken`"),
        "{partial}"
    );
    let nobody = run(&url, &["dead", "retry", "--handler", "nobody", "--yes"], 3);
    assert!(nobody.contains("no handler is named `nobody`"), "{nobody}");

    // retry: a bulk action is not taken unconfirmed; one delivery by id is
    let refused = run(&url, &["dead", "retry", "--handler", BROKEN], 2);
    assert!(refused.contains("--yes"), "{refused}");
    assert_eq!(admin.dead_letters().count().await.unwrap(), 3);
    run(&url, &["dead", "retry"], 2);
    FIXED.lock().unwrap().insert(run_id.clone());
    let retried = json(
        &url,
        &["dead", "retry", &first, "--handler", BROKEN, "--json"],
    );
    assert_eq!(retried["retried"], 1);
    wait_for(&admin, "the retried delivery", |s| {
        figures(s, BROKEN) == (0, 0, 2, 1)
    })
    .await;

    // discard the rest in bulk
    let discarded = json(
        &url,
        &["dead", "discard", "--handler", BROKEN, "--yes", "--json"],
    );
    assert_eq!(discarded["discarded"], 2);
    assert_eq!(admin.dead_letters().count().await.unwrap(), 0);
    run(&url, &["dead", "discard", "--all", "--yes"], 3);

    // backfill: the two discarded deliveries come back (the partner is fixed now), once
    let backfilled = json(
        &url,
        &["backfill", "--handler", BROKEN, "--since", "1h", "--json"],
    );
    assert_eq!(backfilled["created"], 2);
    wait_for(&admin, "the backfilled deliveries", |s| {
        figures(s, BROKEN) == (0, 0, 0, 3)
    })
    .await;
    let again = run(&url, &["backfill", "--handler", BROKEN, "--since", "1h"], 0);
    assert!(again.contains("0 deliveries created"), "{again}");
    let nobody = run(
        &url,
        &["backfill", "--handler", "nobody", "--since", "1h"],
        3,
    );
    assert!(nobody.contains("keel status"), "{nobody}");

    // A relay that stops cleanly is no longer listed.
    app.shutdown().await.unwrap();
    let relays = json(&url, &["status", "--json"])["relays"].clone();
    assert_eq!(relays, Value::Array(vec![]), "{relays}");

    // unsubscribe: `later`, gone from the binaries, with its three retrying deliveries;
    // not without a confirmation, and once
    let refused = run(&url, &["unsubscribe", "--handler", "later"], 2);
    assert!(refused.contains("--yes"), "{refused}");
    let removed = json(
        &url,
        &["unsubscribe", "--handler", "later", "--yes", "--json"],
    );
    assert_eq!(
        (
            removed["subscriptions"].as_i64(),
            removed["deliveries"].as_i64()
        ),
        (Some(1), Some(3))
    );
    let status = json(&url, &["status", "--json"]);
    let handlers = status["handlers"].as_array().unwrap();
    assert!(handlers.iter().all(|h| h["handler"] != "later"), "{status}");
    assert_eq!(handler(&status, "ok")["done_last_minute"], 3, "{status}");
    let again = run(&url, &["unsubscribe", "--handler", "later", "--yes"], 3);
    assert!(again.contains("nothing to remove"), "{again}");
    // A handler with nothing pending but recent history (its row still in `status`): its
    // subscription goes, and a second run finds nothing.
    let removed = run(&url, &["unsubscribe", "--handler", BROKEN], 0);
    assert!(
        removed.contains("1 subscription and 0 pending deliveries"),
        "{removed}"
    );
    run(&url, &["unsubscribe", "--handler", BROKEN, "--yes"], 3);
}

async fn errors<B: TestBackend>() {
    let Some(test) = TestDatabase::<B>::new().await else {
        return;
    };
    let url = with_password(test.url());
    // An unmigrated database: Keel's tables dropped.
    if url.starts_with("postgres") {
        let mut wrong = url::Url::parse(&url).unwrap();
        wrong.set_port(Some(1)).unwrap();
        let wrong = wrong.to_string();
        let out = run(&wrong, &["status"], 1);
        assert!(out.contains("cannot connect"), "{out}");
        test.database()
            .execute_script("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
            .await
            .unwrap();
    } else {
        let out = run("sqlite:/nowhere/keel.db", &["status"], 1);
        assert!(out.contains("no SQLite database"), "{out}");
        let path = url.trim_start_matches("sqlite:").to_owned();
        test.database().close().await.unwrap();
        std::fs::write(&path, b"").unwrap();
    }
    let out = run(&url, &["dead", "list"], 1);
    assert!(out.contains("keel migrate"), "{out}");
    let out = run(&url, &["status", "--json"], 1);
    assert!(out.contains("no Keel tables"), "{out}");
    run("mysql://root@localhost/app", &["status"], 2);
    assert!(run(&url, &["migrate"], 0).contains("created Keel's tables"));
    assert_eq!(
        json(&url, &["status", "--json"])["handlers"],
        Value::Array(vec![])
    );
}

async fn refused<B: Backend>(event: &Noted, _: &mut HandlerContext<B>) -> Result<(), Error> {
    Err(Error::rejected(std::io::Error::other(format!(
        "note {} refused",
        event.n
    ))))
}

/// `dead list` prints the first 100 unless `--limit` says otherwise, and says so on
/// standard error when there may be more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_list_says_when_it_shows_the_first_100_only() {
    let Some(test) = TestDatabase::<keel::sqlx::Sqlite>::new().await else {
        return;
    };
    let url = test.url().to_owned();
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<Noted, _>("refused", refused))
        .unwrap();
    let app = App::builder(test.database().clone(), registry).start();
    app.session()
        .unit_of_work(async |tx| {
            for n in 0..101 {
                tx.record(Noted {
                    run: "cut".into(),
                    n,
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let admin = Admin::new(test.database().clone());
    wait_for(&admin, "101 dead letters", |s| {
        figures(s, "refused").2 == 101
    })
    .await;
    app.shutdown().await.unwrap();
    let cut = keel(&url, &["dead", "list"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&cut.stdout),
        String::from_utf8_lossy(&cut.stderr),
    );
    assert_eq!(stdout.lines().count(), 101, "a header and 100 rows");
    assert!(stderr.contains("the first 100 shown"), "{stderr}");
    let all = keel(&url, &["dead", "list", "--limit", "200"]);
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 102);
    assert!(
        all.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
}

/// `keel status --watch` piped into a reader that stops after the first line (`| head -1`):
/// the next write finds the pipe closed, and the command ends quietly with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_quietly_when_its_reader_goes() {
    use std::io::Read;
    let Some(test) = TestDatabase::<keel::sqlx::Sqlite>::new().await else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["status", "--watch", "1"])
        .env("DATABASE_URL", test.url())
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the keel binary runs");
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).expect("a first table");
    drop(stdout);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keel status --watch kept running after its reader went"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "stderr: {stderr}");
}

mod postgres {
    type B = keel::sqlx::Postgres;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scenario() {
        super::scenario::<B>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors() {
        super::errors::<B>().await;
    }
}

mod sqlite {
    type B = keel::sqlx::Sqlite;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scenario() {
        super::scenario::<B>().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors() {
        super::errors::<B>().await;
    }
}
