//! Commit-order safety: a transaction that recorded its event first (lower id) but commits
//! after a later one is delivered anyway: claims follow due time, not a cursor.

use std::sync::Arc;
use std::time::Duration;

use keel::sqlx;
use keel_testing::TestDatabase;
use tokio::sync::Barrier;

use super::B;
use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_with_a_lower_id_is_delivered() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    schema(&db).await;
    let app = app(&db, both_effects());

    // Producers without routing: only the relay delivers their events.
    let recorded = Arc::new(Barrier::new(2));
    let early = {
        let (mut db, recorded) = (db.connect_again().await.unwrap(), recorded.clone());
        tokio::spawn(async move {
            let recorded = &recorded;
            db.unit_of_work(async |tx| {
                tx.record(Ticked { seq: 1 })?;
                if tx.attempt() == 1 {
                    recorded.wait().await;
                    // Let the later transaction commit and be delivered first.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(tx.recorded()[0].id)
            })
            .await
            .map(|r| r.into_value())
        })
    };
    recorded.wait().await;
    let mut later_db = db.connect_again().await.unwrap();
    let later = later_db
        .unit_of_work(async |tx| {
            tx.record(Ticked { seq: 2 })?;
            Ok(tx.recorded()[0].id)
        })
        .await
        .unwrap()
        .into_value();
    // The relay sees and delivers the later event while the earlier one is uncommitted.
    let mut conn = db.acquire().await.unwrap();
    for _ in 0..200 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM effects WHERE seq = 2")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        if n == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(conn);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM effects WHERE seq = 1").await,
        0
    );
    let early = early.await.unwrap().unwrap();
    assert!(early < later, "the first event got the lower id");

    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM effects WHERE seq = 1").await,
        2
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM effects WHERE seq = 2").await,
        2
    );
    app.shutdown().await.unwrap();
}
