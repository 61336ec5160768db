//! The "likes" domain of the command tests.

use std::time::Duration;

use keel::{Command, DeliveryOptions, Error, sqlx};
use serde::{Deserialize, Serialize};

use super::{App, Database, Handler, HandlerContext, Registry};

/// A user likes a post. Keyed by post: likes of one post are applied one batch at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VoteForPost {
    pub post_id: i64,
    pub user_id: i64,
}

impl Command for VoteForPost {
    const NAME: &'static str = "test.vote_for_post.v1";
    fn key(&self) -> Option<String> {
        Some(format!("post:{}", self.post_id))
    }
}

pub async fn schema(db: &Database) {
    db.execute_script(
        "CREATE TABLE posts (id BIGINT PRIMARY KEY, likes BIGINT NOT NULL);
         INSERT INTO posts VALUES (1, 0), (2, 0), (3, 0);
         CREATE TABLE votes (post_id BIGINT NOT NULL, user_id BIGINT NOT NULL);",
    )
    .await
    .unwrap();
}

/// Applies a batch of votes in one unit of work: `likes = likes + n`.
pub async fn count_votes(votes: &[VoteForPost], ctx: &mut HandlerContext) -> Result<(), Error> {
    apply(votes, ctx).await
}

pub async fn apply(votes: &[VoteForPost], ctx: &mut HandlerContext) -> Result<(), Error> {
    let post_id = votes[0].post_id;
    let n = votes.len() as i64;
    ctx.unit_of_work(async |tx| {
        sqlx::query("UPDATE posts SET likes = likes + $1 WHERE id = $2")
            .bind(n)
            .bind(post_id)
            .execute(tx.conn())
            .await?;
        for vote in votes {
            sqlx::query("INSERT INTO votes (post_id, user_id) VALUES ($1, $2)")
                .bind(vote.post_id)
                .bind(vote.user_id)
                .execute(tx.conn())
                .await?;
        }
        Ok(())
    })
    .await
}

/// Sends a vote of each of `users`, for the post `post_of` gives, from a producer with no
/// worker: the commands wait in the outbox.
pub async fn send_votes(db: &Database, users: std::ops::Range<i64>, post_of: impl Fn(i64) -> i64) {
    let mut producer = db.clone();
    for user_id in users {
        producer
            .send(VoteForPost {
                post_id: post_of(user_id),
                user_id,
            })
            .await
            .unwrap();
    }
}

pub fn quick() -> DeliveryOptions {
    DeliveryOptions::default().poll_interval(Duration::from_millis(20))
}

pub fn app_with(db: &Database, handler: Handler) -> App {
    let mut registry = Registry::new();
    registry.register(handler).unwrap();
    App::builder(db.clone(), registry).delivery(quick()).start()
}

pub async fn scalar(db: &Database, sql: &'static str) -> i64 {
    let mut conn = db.acquire().await.unwrap();
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut *conn).await.unwrap();
    n
}

pub async fn delivered(app: &App) {
    assert!(
        app.wait_until_delivered(Duration::from_secs(60))
            .await
            .unwrap(),
        "commands still pending after 60 s"
    );
}
