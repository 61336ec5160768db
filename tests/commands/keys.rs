//! Ordering keys: a key idle for an hour with nothing pending is purged, a pending command
//! whose key row went missing gets it back and is handled, unordered commands take no
//! number (nor the key row's lock), and a keyed command's group does not wait for members.

use std::time::Duration;

use super::support::*;
use super::{B, Database, Handler, POSTGRES};

async fn idle_keys_are_purged_and_missing_ones_restored(db: Database) {
    schema(&db).await;
    send_votes(&db, 0..6, |user_id| 1 + user_id % 3).await;
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

    // Nothing pending any more: the keys go once idle for an hour.
    app.dispatcher()
        .purge_delivered(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_keys").await, 3);
    db.execute_script(if POSTGRES {
        "UPDATE keel_keys SET last_used = last_used - interval '2 hours'"
    } else {
        "UPDATE keel_keys SET last_used = last_used - 7200000"
    })
    .await
    .unwrap();
    app.dispatcher()
        .purge_delivered(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_keys").await, 0);
    app.shutdown().await.unwrap();
}

/// A like that commutes: one at a time per post, in any order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Like {
    post_id: i64,
    user_id: i64,
}

impl keel::Command for Like {
    const NAME: &'static str = "test.like.v1";
    fn key(&self) -> Option<String> {
        Some(format!("post:{}", self.post_id))
    }
    const ORDERED: bool = false;
}

async fn count_likes(likes: &[Like], ctx: &mut super::HandlerContext) -> Result<(), keel::Error> {
    let votes: Vec<VoteForPost> = likes
        .iter()
        .map(|l| VoteForPost {
            post_id: l.post_id,
            user_id: l.user_id,
        })
        .collect();
    apply(&votes, ctx).await
}

/// Unordered commands on one key, sent at once from eight tasks: none numbered (no key row
/// lock taken), each handled once.
async fn unordered_commands_are_sent_without_numbering(db: Database) {
    schema(&db).await;
    let mut tasks = Vec::new();
    for task in 0..8 {
        let mut producer = db.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..25 {
                producer
                    .send(Like {
                        post_id: 2,
                        user_id: task * 25 + n,
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_events WHERE key_seq IS NOT NULL"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(&db, "SELECT CAST(MAX(next_seq) AS BIGINT) FROM keel_keys").await,
        0
    );
    let app = app_with(
        &db,
        Handler::command_batch::<Like, _>("count_likes", 50, count_likes),
    );
    delivered(&app).await;
    assert_eq!(
        scalar(&db, "SELECT likes FROM posts WHERE id = 2").await,
        200
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM votes").await, 200);
    app.shutdown().await.unwrap();
}

/// A keyed command's group begins at once, whatever the group window: the key's next
/// command waits for its commit. Five votes for one post, handled one by one, the first
/// right after a group of two units of work: it would wait out the window.
async fn keyed_commands_do_not_wait_for_the_group_window(db: Database) {
    schema(&db).await;
    send_votes(&db, 0..5, |_| 1).await;
    let window = Duration::from_secs(30);
    let grouped = keel::UnitOfWorkOptions::named("grouped")
        .grouped(keel::GroupCommit::optimistic().window(window));
    let in_group = async || {
        db.clone()
            .unit_of_work_with(&grouped, async |tx| {
                keel::sqlx::query("SELECT 1").execute(tx.conn()).await?;
                Ok(())
            })
            .await
            .unwrap()
            .into_value()
    };
    // Two at once: they share a group, and a group opened soon after waits for members.
    tokio::join!(in_group(), in_group());
    let mut registry = super::Registry::new();
    registry
        .register(Handler::command_batch::<VoteForPost, _>(
            "count_votes",
            1,
            count_votes,
        ))
        .unwrap();
    let app = super::App::builder(db.clone(), registry)
        .delivery(quick().group_commit(Some(keel::GroupCommit::optimistic().window(window))))
        .start();
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap(),
        "keyed commands waited for the group window"
    );
    assert_eq!(scalar(&db, "SELECT likes FROM posts WHERE id = 1").await, 5);
    app.shutdown().await.unwrap();
}

keel_testing::backend_tests!(
    idle_keys_are_purged_and_missing_ones_restored,
    unordered_commands_are_sent_without_numbering,
    keyed_commands_do_not_wait_for_the_group_window
);
