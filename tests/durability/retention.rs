//! Retention: finished deliveries older than the retention, and dead ones older than the
//! dead-letter retention, are purged in bounded batches with their events; pending ones, and
//! recent ones, stay.

use std::time::Duration;

use super::support::*;
use keel::Error;

use super::{App, B, Database, Handler, HandlerContext, POSTGRES};

async fn old_finished_deliveries_are_purged_in_batches(db: Database) {
    schema(&db).await;
    let app = App::builder(db.clone(), both_effects())
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
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_done").await, 2_400);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_deliveries").await, 0);

    // Age the first 1,000 events and their finished deliveries by two days, on the
    // database's clock. One old delivery is pending again (due in a century): it must
    // survive, and so must its event.
    db.execute_script(if POSTGRES {
        "UPDATE keel_done SET done_at = done_at - interval '2 days'
         WHERE event_id IN (SELECT id FROM keel_events ORDER BY id LIMIT 1000);
         UPDATE keel_events SET created_at = created_at - interval '2 days'
         WHERE id IN (SELECT id FROM keel_events ORDER BY id LIMIT 1000);
         WITH d AS (
             DELETE FROM keel_done
             WHERE event_id = (SELECT id FROM keel_events ORDER BY id LIMIT 1)
               AND handler = 'effect_a'
             RETURNING event_id, handler)
         INSERT INTO keel_deliveries (event_id, handler, next_attempt_at)
         SELECT event_id, handler, now() + interval '100 years' FROM d;"
    } else {
        "UPDATE keel_done SET done_at = done_at - 2 * 86400000
         WHERE event_id IN (SELECT id FROM keel_events ORDER BY id LIMIT 1000);
         UPDATE keel_events SET created_at = created_at - 2 * 86400000
         WHERE id IN (SELECT id FROM keel_events ORDER BY id LIMIT 1000);
         INSERT INTO keel_deliveries (event_id, handler, next_attempt_at)
         SELECT event_id, handler,
                CAST((julianday('now', '+100 years') - 2440587.5) * 86400000 AS INTEGER)
         FROM keel_done
         WHERE event_id = (SELECT id FROM keel_events ORDER BY id LIMIT 1)
           AND handler = 'effect_a';
         DELETE FROM keel_done
         WHERE event_id = (SELECT id FROM keel_events ORDER BY id LIMIT 1)
           AND handler = 'effect_a';"
    })
    .await
    .unwrap();
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
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_done").await, 400);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_deliveries").await, 1);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_events").await, 201);
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_deliveries WHERE status = 'pending'"
        )
        .await,
        1
    );
    app.shutdown().await.unwrap();
}

async fn refuses(_: &Ticked, _: &mut HandlerContext) -> Result<(), Error> {
    Err(Error::rejected(std::io::Error::other("refused")))
}

/// Dead deliveries older than the dead-letter retention go, with their history and event;
/// recent ones stay.
async fn old_dead_deliveries_are_purged(db: Database) {
    schema(&db).await;
    let app = app(
        &db,
        registry(vec![Handler::new::<Ticked, _>("refuses", refuses)]),
    );
    let mut producer = db.clone();
    produce(&mut producer, 2, 1).await.unwrap();
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
    assert_eq!(app.dead_letters().count().await.unwrap(), 2);
    db.execute_script(if POSTGRES {
        "UPDATE keel_deliveries SET updated_at = updated_at - interval '31 days'
         WHERE event_id = (SELECT id FROM keel_events ORDER BY id LIMIT 1)"
    } else {
        "UPDATE keel_deliveries SET updated_at = updated_at - 31 * 86400000
         WHERE event_id = (SELECT id FROM keel_events ORDER BY id LIMIT 1)"
    })
    .await
    .unwrap();
    let removed = app
        .dead_letters()
        .purge(Duration::from_secs(30 * 24 * 3600))
        .await
        .unwrap();
    assert_eq!(removed, 3, "the delivery, its error and its event");
    assert_eq!(app.dead_letters().count().await.unwrap(), 1);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_events").await, 1);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM keel_delivery_errors").await,
        1
    );

    // An entry whose event row is gone (removed by hand) is still listed and shown, as the
    // count says.
    db.execute_script("DELETE FROM keel_events").await.unwrap();
    let listed = app.dead_letters().list(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].event.is_none() && listed[0].event_name.is_empty());
    let shown = app
        .dead_letters()
        .show(listed[0].event_id, "refuses")
        .await
        .unwrap()
        .expect("shown");
    assert_eq!(shown.failures.len(), 1);
    app.shutdown().await.unwrap();
}

keel_testing::backend_tests!(
    old_dead_deliveries_are_purged,
    old_finished_deliveries_are_purged_in_batches
);
