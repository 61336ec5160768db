//! 1000 people like the same post at once: exactly 1000 likes, both ways.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use keel::{RowLock, UnitOfWorkOptions, sqlx};
use tokio::sync::Barrier;

use super::support::*;
use super::{B, Database, Handler};

const LIKES: i64 = 1000;

/// Version B: each request sends a command (instant); workers apply them in batches.
async fn a_thousand_likes_through_the_bus(db: Database) {
    schema(&db).await;
    let app = app_with(
        &db,
        Handler::command_batch::<VoteForPost, _>("count_votes", 100, count_votes),
    );
    let start = Arc::new(Barrier::new(LIKES as usize));
    let mut requests = Vec::new();
    for user_id in 0..LIKES {
        let (app, start) = (app.clone(), start.clone());
        requests.push(tokio::spawn(async move {
            start.wait().await;
            app.session()
                .send(VoteForPost {
                    post_id: 1,
                    user_id,
                })
                .await
        }));
    }
    for request in requests {
        request.await.unwrap().unwrap();
    }
    delivered(&app).await;
    assert_eq!(
        scalar(&db, "SELECT likes FROM posts WHERE id = 1").await,
        LIKES
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(DISTINCT user_id) FROM votes").await,
        LIKES
    );
    assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    // Fewer units of work than likes: they were applied in batches.
    let handled_groups = scalar(
        &db,
        "SELECT COUNT(DISTINCT done_at) FROM keel_done WHERE handler = 'count_votes'",
    )
    .await;
    assert!(handled_groups < LIKES, "no batching happened");
    app.shutdown().await.unwrap();
}

/// Version A: each request is its own unit of work, with a row lock. Correct, contended.
async fn a_thousand_likes_with_row_locks(db: Database) {
    schema(&db).await;
    let retries = Arc::new(AtomicU32::new(0));
    let mut requests = Vec::new();
    for _ in 0..LIKES {
        let (mut db, retries) = (db.clone(), retries.clone());
        requests.push(tokio::spawn(async move {
            let retries = &retries;
            db.unit_of_work_with(&UnitOfWorkOptions::named("like"), async |tx| {
                if tx.attempt() > 1 {
                    retries.fetch_add(1, Ordering::SeqCst);
                }
                let _ = tx.lock(RowLock::for_update("posts", 1)).await?;
                let (likes,): (i64,) = sqlx::query_as("SELECT likes FROM posts WHERE id = 1")
                    .fetch_one(tx.conn())
                    .await?;
                sqlx::query("UPDATE posts SET likes = $1 WHERE id = 1")
                    .bind(likes + 1)
                    .execute(tx.conn())
                    .await?;
                Ok(())
            })
            .await
            .map(|receipt| receipt.into_value())
        }));
    }
    for request in requests {
        request.await.unwrap().unwrap();
    }
    assert_eq!(
        scalar(&db, "SELECT likes FROM posts WHERE id = 1").await,
        LIKES
    );
}

keel_testing::backend_tests!(
    a_thousand_likes_through_the_bus,
    a_thousand_likes_with_row_locks
);
