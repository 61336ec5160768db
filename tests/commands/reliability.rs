//! Retries count once, a crashed batch counts once, a worker stopped while busy loses and
//! doubles nothing, and workers stop at their limits.

use std::time::Duration;

use keel::{Error, RetryPolicy, WorkerLimits, sqlx};

use super::support::*;
use super::{App, B, Database, Handler, HandlerContext, Registry};

fn quick_retry() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(5)
        .base_delay(Duration::from_millis(10))
}

/// Fails the first two attempts of every batch, then applies it.
async fn fails_twice(votes: &[VoteForPost], ctx: &mut HandlerContext) -> Result<(), Error> {
    if ctx.attempt() <= 2 {
        return Err(Error::Database(sqlx::Error::Protocol(
            "database hiccup".into(),
        )));
    }
    apply(votes, ctx).await
}

async fn a_handler_failing_twice_counts_once(db: Database) {
    schema(&db).await;
    let app = app_with(
        &db,
        Handler::command_batch::<VoteForPost, _>("fails_twice", 50, fails_twice)
            .retry(quick_retry()),
    );
    for user_id in 0..120 {
        app.session()
            .send(VoteForPost {
                post_id: 2,
                user_id,
            })
            .await
            .unwrap();
    }
    delivered(&app).await;
    assert_eq!(
        scalar(&db, "SELECT likes FROM posts WHERE id = 2").await,
        120
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM votes").await, 120);
    assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    app.shutdown().await.unwrap();
}

/// Crashes in the middle of its batch's unit of work (after `likes = likes + n`, before
/// the commit) on the first attempt.
async fn crashes_mid_batch(votes: &[VoteForPost], ctx: &mut HandlerContext) -> Result<(), Error> {
    let attempt = ctx.attempt();
    let post_id = votes[0].post_id;
    let n = votes.len() as i64;
    ctx.unit_of_work(async |tx| {
        sqlx::query("UPDATE posts SET likes = likes + $1 WHERE id = $2")
            .bind(n)
            .bind(post_id)
            .execute(tx.conn())
            .await?;
        if attempt == 1 {
            panic!("process crashes mid-batch");
        }
        Ok(())
    })
    .await
}

async fn a_batch_retried_after_a_crash_counts_once(db: Database) {
    schema(&db).await;
    let app = app_with(
        &db,
        Handler::command_batch::<VoteForPost, _>("crashes", 25, crashes_mid_batch)
            .retry(quick_retry()),
    );
    for user_id in 0..100 {
        app.session()
            .send(VoteForPost {
                post_id: 3,
                user_id,
            })
            .await
            .unwrap();
    }
    delivered(&app).await;
    assert_eq!(
        scalar(&db, "SELECT likes FROM posts WHERE id = 3").await,
        100
    );
    assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    app.shutdown().await.unwrap();
}

async fn slow_votes(votes: &[VoteForPost], ctx: &mut HandlerContext) -> Result<(), Error> {
    tokio::time::sleep(Duration::from_millis(30)).await;
    apply(votes, ctx).await
}

async fn a_worker_stopped_while_busy_loses_and_doubles_nothing(db: Database) {
    schema(&db).await;
    send_votes(&db, 0..300, |user_id| 1 + user_id % 3).await;
    let handler = || Handler::command_batch::<VoteForPost, _>("slow_votes", 10, slow_votes);
    // Each worker process on a pool of its own (shutting an app down closes its pool).
    let first = app_with(&db.connect_again().await.unwrap(), handler());
    tokio::time::sleep(Duration::from_millis(150)).await;
    first.clone().shutdown().await.unwrap(); // busy: stops claiming, finishes what it took
    let after_first = scalar(&db, "SELECT COUNT(*) FROM votes").await;
    assert!(
        after_first > 0 && after_first < 300,
        "stopped while busy: {after_first}"
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM keel_deliveries WHERE leased_by IS NOT NULL AND status = 'pending'").await,
        0,
        "nothing left claimed by the stopped worker"
    );

    let second = app_with(&db.connect_again().await.unwrap(), handler());
    delivered(&second).await;
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM votes").await, 300);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM (SELECT user_id FROM votes GROUP BY user_id HAVING COUNT(*) > 1) d").await,
        0
    );
    assert_eq!(
        scalar(&db, "SELECT CAST(SUM(likes) AS BIGINT) FROM posts").await,
        300
    );
    second.shutdown().await.unwrap();
}

async fn one_by_one(vote: &VoteForPost, ctx: &mut HandlerContext) -> Result<(), Error> {
    apply(std::slice::from_ref(vote), ctx).await
}

async fn a_worker_stops_at_its_limits(db: Database) {
    schema(&db).await;
    send_votes(&db, 0..50, |_| 1).await;
    let mut registry = Registry::new();
    registry
        .register(Handler::command::<VoteForPost, _>("one_by_one", one_by_one))
        .unwrap();
    let app = App::builder(db.clone(), registry)
        .delivery(quick())
        .relay(false)
        .start();
    let report = app
        .dispatcher()
        .run_worker(WorkerLimits {
            messages: Some(20),
            duration: None,
        })
        .await
        .unwrap();
    assert_eq!(report.messages, 20);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM votes").await, 20);
    let report = app
        .dispatcher()
        .run_worker(WorkerLimits {
            messages: None,
            duration: Some(Duration::from_secs(2)),
        })
        .await
        .unwrap();
    assert_eq!(report.messages, 30);
    assert!(report.elapsed >= Duration::from_secs(2));
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM votes").await, 50);
    app.shutdown().await.unwrap();
}

/// An older shape of `VoteForPost`, under the same name: its payload lacks `user_id`.
#[derive(serde::Serialize, serde::Deserialize)]
struct OldVoteForPost {
    post_id: i64,
    voter: String,
}

impl keel::Command for OldVoteForPost {
    const NAME: &'static str = "test.vote_for_post.v1";
    fn key(&self) -> Option<String> {
        Some(format!("post:{}", self.post_id))
    }
}

/// One command that no longer decodes, in the middle of a batch: it alone goes to the dead
/// letter, with its own error; the ten others are applied.
async fn one_undecodable_command_does_not_sink_its_batch(db: Database) {
    schema(&db).await;
    let app = app_with(
        &db,
        Handler::command_batch::<VoteForPost, _>("count_votes", 100, count_votes),
    );
    app.session()
        .unit_of_work(async |tx| {
            for user_id in 0..10 {
                if user_id == 5 {
                    tx.send(OldVoteForPost {
                        post_id: 3,
                        voter: "old client".into(),
                    })?;
                }
                tx.send(VoteForPost {
                    post_id: 3,
                    user_id,
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    delivered(&app).await;
    assert_eq!(
        scalar(&db, "SELECT likes FROM posts WHERE id = 3").await,
        10
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM votes").await, 10);
    let dead = app.dead_letters().list(20).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(dead[0].payload.contains("old client"), "{dead:#?}");
    assert!(
        dead[0].failures.iter().all(|f| f.error.contains("user_id")),
        "{:?}",
        dead[0].failures
    );
    app.shutdown().await.unwrap();
}

keel_testing::backend_tests!(
    one_undecodable_command_does_not_sink_its_batch,
    a_handler_failing_twice_counts_once,
    a_batch_retried_after_a_crash_counts_once,
    a_worker_stopped_while_busy_loses_and_doubles_nothing,
    a_worker_stops_at_its_limits,
);
