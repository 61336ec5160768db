//! One key's backlog, retry or lease never stalls the other keys.

use std::time::{Duration, Instant};

use keel::{Error, sqlx};

use super::support::*;
use super::{B, Database, Handler, HandlerContext, POSTGRES};

/// Records each vote it handles, in handling order; the first vote of post 1 asks for a
/// retry in 3 s on its first attempt.
async fn recorded(vote: &VoteForPost, ctx: &mut HandlerContext) -> Result<(), Error> {
    if vote.post_id == 1 && vote.user_id == 0 && ctx.attempt() == 1 {
        return Err(Error::retry_after(
            Duration::from_secs(3),
            Error::external("partner busy"),
        ));
    }
    let vote = vote.clone();
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO handled (post_id, user_id) VALUES ($1, $2)")
            .bind(vote.post_id)
            .bind(vote.user_id)
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

async fn a_hot_key_stalls_no_other_key(db: Database) {
    schema(&db).await;
    db.execute_script(if POSTGRES {
        "CREATE TABLE handled (n BIGSERIAL PRIMARY KEY, post_id BIGINT NOT NULL,
                               user_id BIGINT NOT NULL)"
    } else {
        "CREATE TABLE handled (n INTEGER PRIMARY KEY AUTOINCREMENT, post_id BIGINT NOT NULL,
                               user_id BIGINT NOT NULL)"
    })
    .await
    .unwrap();
    // 1,100 votes for post 1 (its first one retried in 3 s), then one vote for each of
    // 20 other posts, all waiting in the outbox.
    let mut producer = db.clone();
    producer
        .unit_of_work(async |tx| {
            for user_id in 0..1_100 {
                tx.send(VoteForPost {
                    post_id: 1,
                    user_id,
                })?;
            }
            for post_id in 100..120 {
                tx.send(VoteForPost {
                    post_id,
                    user_id: 0,
                })?;
            }
            Ok(())
        })
        .await
        .unwrap()
        .into_value();
    let started = Instant::now();
    let app = app_with(
        &db,
        Handler::command::<VoteForPost, _>("recorded", recorded),
    );
    while scalar(&db, "SELECT COUNT(*) FROM handled WHERE post_id >= 100").await < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the other posts waited behind post 1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Post 1 waited for its head's retry meanwhile: strict order within the key.
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM handled WHERE post_id = 1").await,
        0
    );
    app.shutdown().await.unwrap();
}

keel_testing::backend_tests!(a_hot_key_stalls_no_other_key);
