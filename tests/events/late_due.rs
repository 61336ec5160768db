//! Under a backlog the relay's claims start where its claims got to, past the deliveries
//! it leased (see the dispatcher's `cursor` module). Deliveries due before that point (a
//! lease that expired, a lease released, a commit whose transaction began before others)
//! must not wait for the end of the backlog: a claim starts from the first due delivery at
//! least every 100 ms, and a full one moves the cursor back, so many are swept at once.

use std::sync::Mutex;
use std::time::Duration;

use keel::{DeliveryOptions, Error};

use super::support::{OrderPlaced, commit_elsewhere};
use super::{App, Handler, HandlerContext, POSTGRES, Registry};

const BACKLOG: i64 = 800;

/// Order ids in the order their handler ran (the tests of a module share it: each has
/// ids of its own, from `base`, the late ones negative).
static RAN: Mutex<Vec<i64>> = Mutex::new(Vec::new());

fn ran(base: i64) -> Vec<i64> {
    let mine =
        |id: &&i64| (base..base + BACKLOG).contains(*id) || (-base - 1000..-base).contains(*id);
    RAN.lock().unwrap().iter().filter(mine).copied().collect()
}

async fn slow(event: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    RAN.lock().unwrap().push(event.order_id);
    tokio::time::sleep(Duration::from_millis(8)).await;
    Ok(())
}

/// Waits until the relay has recorded its subscription (commits made before it are routed
/// later, and due then) and, on PostgreSQL, listens for other processes' commits.
async fn relay_ready(db: &super::Database) {
    let ready = if POSTGRES {
        "SELECT count(*) FROM keel_subscriptions WHERE handler = 'slow'
         HAVING EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE datname = current_database()
                          AND application_name LIKE 'keel-relay%')"
    } else {
        "SELECT count(*) FROM keel_subscriptions WHERE handler = 'slow'"
    };
    let started = std::time::Instant::now();
    loop {
        let mut conn = db.acquire().await.unwrap();
        let found: Option<i64> = keel::sqlx::query_scalar(ready)
            .fetch_optional(&mut *conn)
            .await
            .unwrap();
        if found.is_some_and(|n| n > 0) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the relay did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a backlog, then makes `late` deliveries due before the claims' cursor, and checks
/// that each ran within 200 deliveries of it.
async fn late_deliveries_run_within_the_interval(base: i64, late: i64) {
    let Some(test) = keel_testing::TestDatabase::<super::B>::new().await else {
        return;
    };
    let db = test.database().clone();
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("slow", slow))
        .unwrap();
    // Small claims, each full while the backlog lasts; no poll to rescue the late ones.
    let options = DeliveryOptions::default()
        .max_in_flight(4)
        .batch_size(4)
        .poll_interval(Duration::from_secs(60));
    let app = App::builder(db.clone(), registry).delivery(options).start();
    relay_ready(&db).await;
    let mut other = db.connect_again().await.unwrap();
    let _receipt = commit_elsewhere(&app, &mut other, base..base + BACKLOG).await;
    // Not a test of notifications: the relay is woken whether or not one reaches it.
    app.dispatcher().wake_relay();
    let started = std::time::Instant::now();
    while ran(base).len() < 40 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the backlog did not start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Committed now, then made due an hour ago: before every delivery of the backlog, so
    // before the point the relay's claims start from.
    let receipt = commit_elsewhere(&app, &mut other, -base - late..-base).await;
    let ids: Vec<String> = receipt.events().iter().map(|e| e.id.to_string()).collect();
    let backdate = if POSTGRES {
        "UPDATE keel_deliveries SET next_attempt_at = next_attempt_at - interval '1 hour'
         WHERE event_id = ANY (CAST($1 AS uuid[])) AND leased_until IS NULL"
    } else {
        "UPDATE keel_deliveries SET next_attempt_at = next_attempt_at - 3600000
         WHERE event_id IN (SELECT value FROM json_each($1)) AND leased_until IS NULL"
    };
    let ids = if POSTGRES {
        format!("{{{}}}", ids.join(","))
    } else {
        serde_json::to_string(&ids).unwrap()
    };
    let mut conn = db.acquire().await.unwrap();
    let backdated = keel::sqlx::query(backdate)
        .bind(ids)
        .execute(&mut *conn)
        .await
        .unwrap()
        .rows_affected();
    drop(conn);
    assert_eq!(
        backdated, late as u64,
        "late deliveries were claimed before they were due first"
    );
    let at_backdate = ran(base).len();

    assert!(
        app.wait_until_delivered(Duration::from_secs(60))
            .await
            .unwrap()
    );
    app.shutdown().await.unwrap();
    let ran = ran(base);
    let is_late = |id: &i64| *id < 0;
    let last_late = ran.iter().rposition(is_late).expect("the late ones ran");
    assert_eq!(ran.iter().filter(|id| is_late(id)).count(), late as usize);
    assert!(
        last_late < at_backdate + 200,
        "the last of {late} deliveries due before the claims' cursor ran {} deliveries \
         after they were due (of {} left): they waited for the backlog",
        last_late - at_backdate,
        BACKLOG as usize - at_backdate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_due_before_the_claims_cursor_does_not_wait_for_the_backlog() {
    late_deliveries_run_within_the_interval(0, 1).await;
}

/// Ten batches due before the cursor at once (a crashed process's leases expiring) are
/// swept in a row, not one batch per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_deliveries_due_before_the_claims_cursor_are_swept_at_once() {
    late_deliveries_run_within_the_interval(10_000, 40).await;
}
