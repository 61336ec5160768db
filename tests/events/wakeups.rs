//! A relay claims when something may be due, not whenever a delivery ends: at low load
//! every delivery ends in an empty claim window, and a claim then would find nothing (the
//! claims are counted by their metric, from a recorder local to the test's thread); with a
//! backlog beyond the window, ending deliveries wake it for the rest.

use std::time::Duration;

use keel::{DeliveryOptions, Error};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use super::support::{OrderPlaced, commit_elsewhere};
use super::{App, Database, Handler, HandlerContext, POSTGRES, Registry};

const EVENTS: i64 = 10;

/// A handler that writes nothing: the dispatcher marks its deliveries done.
async fn noted(_: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    Ok(())
}

/// Claims that found some deliveries and claims that found none (a snapshot resets the
/// recorder's counters: read once).
fn claims(snapshotter: &Snapshotter) -> (u64, u64) {
    let (mut some, mut none) = (0, 0);
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() != "keel_relay_claims_total" {
            continue;
        }
        let DebugValue::Counter(n) = value else {
            panic!("keel_relay_claims_total: {value:?}");
        };
        match key.key().labels().next().map(|l| l.value()) {
            Some("some") => some += n,
            Some("none") => none += n,
            other => panic!("keel_relay_claims_total{{found={other:?}}}"),
        }
    }
    (some, none)
}

async fn run(db: Database) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Local to this thread: the test's runtime has one thread, so every task it spawns
    // records here, and tests running beside it do not.
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("noted", noted))
        .unwrap();
    // Polls rare enough to count little: nearly every claim is a wake-up's (a poll also
    // finds a delivery whose notification was missed, as under load it can be).
    let app = App::builder(db.clone(), registry)
        .delivery(DeliveryOptions::default().poll_interval(Duration::from_secs(5)))
        .start();
    // Committed by another process (a pool of its own): claimed by the relay. A
    // notification wakes it on PostgreSQL; SQLite relays poll, so the test wakes it.
    let other = db.connect_again().await.unwrap();
    let by_other = async |order_id| {
        // No dispatcher on this pool: nothing is reserved for the receipt to release.
        let _receipt = other
            .clone()
            .unit_of_work(async |tx| tx.record(OrderPlaced { order_id }))
            .await
            .unwrap();
        if !POSTGRES {
            app.dispatcher().wake_relay();
        }
        assert!(
            app.wait_until_delivered(Duration::from_secs(10))
                .await
                .unwrap()
        );
        app.dispatcher().wait_idle().await;
    };
    // The relay's first claims, at start, find nothing: counted before the test proper.
    by_other(-1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    claims(&snapshotter);

    // Delivered at once by the committing process (the fast path), one at a time.
    for order_id in 0..EVENTS {
        app.session()
            .unit_of_work(async |tx| tx.record(OrderPlaced { order_id }))
            .await
            .unwrap();
        app.dispatcher().wait_idle().await;
    }
    // Claimed by the relay, one at a time.
    for order_id in EVENTS..2 * EVENTS {
        by_other(order_id).await;
    }
    app.shutdown().await.unwrap();
    let (some, none) = claims(&snapshotter);
    assert!(some >= EVENTS as u64, "{some} claims found deliveries");
    // One claim per commit left to the relay, each finding its delivery, and a poll or two.
    assert!(
        none <= 2,
        "{none} claims found nothing for {} deliveries: ending deliveries wake the relay \
         though no claim was held back",
        2 * EVENTS
    );
}

/// Waits a little, so that deliveries end one after another.
async fn slow(_: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(())
}

/// A backlog larger than the claim window: each claim takes what fits, and deliveries
/// that end wake the relay for the rest, without waiting for its polls.
async fn backlog(db: Database) {
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("slow", slow))
        .unwrap();
    let window = DeliveryOptions::default()
        .max_in_flight(2)
        .batch_size(4)
        .poll_interval(Duration::from_secs(60));
    let app = App::builder(db.clone(), registry).delivery(window).start();
    let mut other = db.connect_again().await.unwrap();
    let _receipt = commit_elsewhere(&app, &mut other, 0..60).await;
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap(),
        "deliveries left for the relay's poll (a minute away): ending deliveries did not \
         wake it for the rest of the backlog"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_beyond_the_claim_window_is_claimed_as_room_frees() {
    if let Some(test) = keel_testing::TestDatabase::<super::B>::new().await {
        backlog(test.database().clone()).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn deliveries_ending_at_low_load_do_not_wake_the_relay() {
    if let Some(test) = keel_testing::TestDatabase::<super::B>::new().await {
        run(test.database().clone()).await;
    }
}
