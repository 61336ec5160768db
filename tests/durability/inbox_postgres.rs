//! Concurrent duplicates of one delivery, which only PostgreSQL runs at the same moment
//! (SQLite has one writer at a time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use keel::Error;
use keel_testing::TestDatabase;
use tokio::sync::Barrier;

use super::B;
use super::inbox::{pending_delivery, process};
use super::support::*;

/// Two deliveries of one event running at the same moment (PostgreSQL: the second waits
/// on the first's mark, then finds it): the effects happen once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_commit_effects_once() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    schema(&db).await;
    let event_id = pending_delivery(&db, "effect").await;
    let runs = Arc::new(AtomicU32::new(0));
    let both_started = Arc::new(Barrier::new(2));
    let first = {
        let (db, event_id, runs, both_started) = (
            db.connect_again().await.unwrap(),
            event_id,
            runs.clone(),
            both_started.clone(),
        );
        tokio::spawn(async move { process(db, event_id, &runs, Some(&both_started)).await })
    };
    // The second starts once the first holds the mark (inside its steps).
    let second = {
        let (db, event_id, runs) = (db.connect_again().await.unwrap(), event_id, runs.clone());
        let both_started = both_started.clone();
        tokio::spawn(async move {
            both_started.wait().await;
            process(db, event_id, &runs, None).await
        })
    };
    first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap_err();
    assert!(matches!(second, Error::AlreadyProcessed { .. }), "{second}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects").await, 1);
}
