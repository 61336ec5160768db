//! The processed marker: the unit of work that processes a delivery marks it done in its
//! own transaction. A repeated delivery of the same event (a relay that stalled past its
//! lease, say) finds the mark, runs none of its steps and changes nothing.

use std::sync::atomic::{AtomicU32, Ordering};

use keel::{Error, EventId, UnitOfWorkOptions, sqlx};
use tokio::sync::Barrier;

use super::support::*;
use super::{B, Database, POSTGRES};

/// Writes one unrouted event and a pending delivery of it to `handler`, as a relay would
/// have routed it; returns the event id.
pub(super) async fn pending_delivery(db: &Database, handler: &str) -> EventId {
    let mut producer = db.clone();
    let event_id = producer
        .unit_of_work(async |tx| {
            tx.record(Ticked { seq: 1 })?;
            Ok(tx.recorded()[0].id)
        })
        .await
        .unwrap()
        .into_value();
    let mut conn = db.acquire().await.unwrap();
    // Due now (the columns' defaults are the database's clock).
    let sql = if POSTGRES {
        "INSERT INTO keel_deliveries (event_id, handler, status, attempts)
         VALUES (CAST($1 AS UUID), $2, 'pending', 1)"
    } else {
        "INSERT INTO keel_deliveries (event_id, handler, status, attempts)
         VALUES ($1, $2, 'pending', 1)"
    };
    sqlx::query(sql)
        .bind(event_id.to_string())
        .bind(handler)
        .execute(&mut *conn)
        .await
        .unwrap();
    event_id
}

pub(super) async fn process(
    mut db: Database,
    event_id: EventId,
    runs: &AtomicU32,
    wait: Option<&Barrier>,
) -> Result<(), Error> {
    let options = UnitOfWorkOptions::named("effect").processing(event_id, "effect");
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
    process(db.clone(), event_id, &runs, None).await.unwrap();
    let again = process(db.clone(), event_id, &runs, None)
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
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_done").await, 1);
}

async fn a_failed_attempt_leaves_no_mark(db: Database) {
    schema(&db).await;
    let event_id = pending_delivery(&db, "effect").await;
    let mut handle = db.clone();
    let options = UnitOfWorkOptions::named("effect").processing(event_id, "effect");
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
