//! Retention: finished deliveries older than the retention are purged in bounded batches,
//! with their events; pending and dead ones, and recent ones, stay.

use std::time::Duration;

use keel::{Database, sqlx};

use crate::support::*;

async fn old_finished_deliveries_are_purged_in_batches(db: Database) {
    schema(&db).await;
    let app = keel::App::builder(db.clone(), both_effects())
        .delivery(
            quick()
                .retention(None)
                .purge(500, Duration::from_secs(3600)),
        )
        .start();
    // A producer without routing: the relay routes and delivers.
    let mut producer = db.clone();
    produce(&mut producer, 1_200, 400).await.unwrap();
    assert!(
        app.wait_until_delivered(Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM keel_deliveries").await,
        2_400
    );

    // Age the first 1,000 events and their deliveries by two days.
    let two_days = 2 * 24 * 3600 * 1000_i64;
    {
        let mut conn = db.acquire().await.unwrap();
        sqlx::query(
            "UPDATE keel_deliveries SET updated_at = updated_at - $1 WHERE event_id IN
             (SELECT id FROM keel_events ORDER BY id LIMIT 1000)",
        )
        .bind(two_days)
        .execute(&mut *conn)
        .await
        .unwrap();
        sqlx::query(
            "UPDATE keel_events SET created_at = created_at - $1 WHERE id IN
             (SELECT id FROM keel_events ORDER BY id LIMIT 1000)",
        )
        .bind(two_days)
        .execute(&mut *conn)
        .await
        .unwrap();
        // One old delivery is still pending: it must survive, and so must its event.
        sqlx::query(
            "UPDATE keel_deliveries SET status = 'pending', leased_until = NULL,
             next_attempt_at = 9000000000000
             WHERE event_id = (SELECT id FROM keel_events ORDER BY id LIMIT 1) AND handler = 'effect_a'",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    let removed = app
        .dispatcher()
        .purge_delivered(Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(
        removed,
        1_999 + 999,
        "1,999 old done deliveries and 999 events"
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM keel_deliveries").await,
        401
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_events").await, 201);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_deliveries WHERE status = 'pending'"
        )
        .await,
        1
    );
    app.shutdown().await;
}

keel_testing::backend_tests!(old_finished_deliveries_are_purged_in_batches);
