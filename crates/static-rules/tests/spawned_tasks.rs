//! The right way, which must compile: a unit of work whose closure borrows from its surroundings runs inside `tokio::spawn`
//! (the future is `Send`), and a handler chains through its own unit of work.
use keel::Error;
use keel::postgres::{App, HandlerContext};

#[derive(serde::Serialize, serde::Deserialize)]
struct PostLiked {
    post_id: i64,
}

impl keel::DomainEvent for PostLiked {
    const NAME: &'static str = "post.liked.v1";
    const AGGREGATE_TYPE: &'static str = "Post";
    fn aggregate_id(&self) -> String {
        self.post_id.to_string()
    }
}

async fn like_all(app: App, post_ids: Vec<i64>) -> Result<u32, Error> {
    tokio::spawn(async move {
        let ids = &post_ids;
        let bonus = 1_i64;
        let bonus = &bonus;
        let mut session = app.session();
        session
            .unit_of_work(async |tx| {
                for id in ids {
                    keel::sqlx::query("UPDATE posts SET likes = likes + $1 WHERE id = $2")
                        .bind(*bonus)
                        .bind(*id)
                        .execute(tx.conn())
                        .await?;
                    tx.record(PostLiked { post_id: *id })?;
                }
                Ok(tx.attempt())
            })
            .await
    })
    .await
    .expect("task")
}

async fn thank_author(event: &PostLiked, ctx: &mut HandlerContext) -> Result<(), Error> {
    let post_id = event.post_id;
    ctx.unit_of_work(async |tx| {
        keel::sqlx::query("UPDATE authors SET thanks = thanks + 1 WHERE post_id = $1")
            .bind(post_id)
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

keel::register_handler!(PostLiked => thank_author);

#[test]
fn compiles() {
    let _ = like_all;
}
