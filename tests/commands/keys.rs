//! Ordering keys do not pile up: a key with nothing pending is purged, and a pending command
//! whose key row went missing (committed while its idle key was being purged) gets it back
//! and is handled.

use std::time::Duration;

use super::support::*;
use super::{B, Database, Handler};

async fn idle_keys_are_purged_and_missing_ones_restored(db: Database) {
    schema(&db).await;
    // The producer has no worker: commands wait in the outbox.
    let mut producer = db.clone();
    for user_id in 0..6 {
        producer
            .send(VoteForPost {
                post_id: 1 + user_id % 3,
                user_id,
            })
            .await
            .unwrap();
    }
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_keys").await, 3);
    db.execute_script("DELETE FROM keel_keys WHERE key = 'post:1'")
        .await
        .unwrap();

    let app = app_with(
        &db,
        Handler::command_batch::<VoteForPost, _>("count_votes", 100, count_votes),
    );
    // The relay's periodic purge (run here at once) gives the key row back.
    app.dispatcher()
        .purge_delivered(Duration::from_secs(3600))
        .await
        .unwrap();
    delivered(&app).await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM votes").await, 6);

    // Nothing pending any more: the keys go.
    app.dispatcher()
        .purge_delivered(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_keys").await, 0);
    app.shutdown().await.unwrap();
}

keel_testing::backend_tests!(idle_keys_are_purged_and_missing_ones_restored);
