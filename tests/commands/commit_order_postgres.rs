//! Per-key order is commit order: a command sent earlier, in a transaction that commits
//! later, runs after the command of the transaction that committed first.

use std::sync::Arc;
use std::time::Duration;

use keel::{Error, sqlx};
use keel_testing::TestDatabase;
use tokio::sync::Barrier;

use super::support::*;
use super::{B, Handler, HandlerContext};

async fn recorded(vote: &VoteForPost, ctx: &mut HandlerContext) -> Result<(), Error> {
    let vote = vote.clone();
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO handled (user_id) VALUES ($1)")
            .bind(vote.user_id)
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_runs_its_commands_in_commit_order() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    schema(&db).await;
    db.execute_script("CREATE TABLE handled (n BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL)")
        .await
        .unwrap();

    // Vote 1 is sent first, but its transaction commits after vote 2's.
    let sent = Arc::new(Barrier::new(2));
    let first = {
        let (mut db, sent) = (db.connect_again().await.unwrap(), sent.clone());
        tokio::spawn(async move {
            let sent = &sent;
            db.unit_of_work(async |tx| {
                tx.send(VoteForPost {
                    post_id: 1,
                    user_id: 1,
                })?;
                if tx.attempt() == 1 {
                    sent.wait().await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok(())
            })
            .await
            .map(|r| r.into_value())
        })
    };
    sent.wait().await;
    let mut second = db.connect_again().await.unwrap();
    second
        .unit_of_work(async |tx| {
            tx.send(VoteForPost {
                post_id: 1,
                user_id: 2,
            })?;
            Ok(())
        })
        .await
        .unwrap()
        .into_value();
    first.await.unwrap().unwrap();

    let app = app_with(
        &db,
        Handler::command::<VoteForPost, _>("recorded", recorded),
    );
    delivered(&app).await;
    let mut conn = db.acquire().await.unwrap();
    let order: Vec<i64> = sqlx::query_scalar("SELECT user_id FROM handled ORDER BY n")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(order, vec![2, 1], "commit order");
    app.shutdown().await.unwrap();
}
