//! The processed marker: the unit of work that processes a delivery marks it done in its
//! own transaction. A repeated delivery of the same event (a relay that stalled past its
//! lease, say) finds the mark, runs none of its steps and changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use keel::{Database, Error, UnitOfWork, sqlx};
use tokio::sync::Barrier;

use crate::support::*;

/// Writes one unrouted event and a pending delivery of it to `handler`, as a relay would
/// have routed it; returns the event id.
async fn pending_delivery(db: &Database, handler: &str) -> String {
    let mut producer = db.clone();
    let event_id = producer
        .unit_of_work(async |tx| {
            tx.record(Ticked { seq: 1 })?;
            Ok(tx.recorded()[0].id.to_string())
        })
        .await
        .unwrap()
        .into_value();
    let mut conn = db.acquire().await.unwrap();
    sqlx::query(
        "INSERT INTO keel_deliveries (event_id, handler, status, attempts, next_attempt_at, updated_at)
         VALUES ($1, $2, 'pending', 1, 0, 0)",
    )
    .bind(event_id.as_str())
    .bind(handler)
    .execute(&mut *conn)
    .await
    .unwrap();
    event_id
}

async fn process(
    mut db: Database,
    event_id: String,
    runs: &AtomicU32,
    wait: Option<&Barrier>,
) -> Result<(), Error> {
    let options = UnitOfWork::named("effect").processing(event_id, "effect");
    db.unit_of_work_with(&options, async |tx| {
        runs.fetch_add(1, Ordering::SeqCst);
        if let (Some(wait), 1) = (wait, tx.attempt()) {
            wait.wait().await;
        }
        sqlx::query("INSERT INTO effects (seq, handler, attempt) VALUES (1, 'effect', 1)")
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
    .map(|receipt| receipt.into_value())
}

async fn a_repeated_delivery_changes_nothing(db: Database) {
    schema(&db).await;
    let event_id = pending_delivery(&db, "effect").await;
    let runs = AtomicU32::new(0);
    process(db.clone(), event_id.clone(), &runs, None)
        .await
        .unwrap();
    let again = process(db.clone(), event_id.clone(), &runs, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            Error::AlreadyProcessed {
                handler: "effect",
                ..
            }
        ),
        "{again}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the steps of the repeat never ran"
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects").await, 1);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_deliveries WHERE status = 'done'"
        )
        .await,
        1
    );
}

async fn a_failed_attempt_leaves_no_mark(db: Database) {
    schema(&db).await;
    let event_id = pending_delivery(&db, "effect").await;
    let mut handle = db.clone();
    let options = UnitOfWork::named("effect").processing(event_id.clone(), "effect");
    let err = handle
        .unit_of_work_with(&options, async |_tx| {
            Err::<(), _>(Error::rejected(std::io::Error::other("boom")))
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("boom"));
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_deliveries WHERE status = 'pending'"
        )
        .await,
        1,
        "the mark rolled back with the effects"
    );
    let runs = AtomicU32::new(0);
    process(db.clone(), event_id, &runs, None).await.unwrap();
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects").await, 1);
}

keel_testing::backend_tests!(
    a_repeated_delivery_changes_nothing,
    a_failed_attempt_leaves_no_mark
);

/// Two deliveries of one event running at the same moment (PostgreSQL: the second waits
/// on the first's mark, then finds it): the effects happen once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_commit_effects_once_postgres() {
    let Some(test_db) = keel_testing::TestDatabase::postgres().await else {
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
            event_id.clone(),
            runs.clone(),
            both_started.clone(),
        );
        tokio::spawn(async move { process(db, event_id, &runs, Some(&both_started)).await })
    };
    // The second starts once the first holds the mark (inside its steps).
    let second = {
        let (db, event_id, runs) = (
            db.connect_again().await.unwrap(),
            event_id.clone(),
            runs.clone(),
        );
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
