//! A unit of work inside an axum route handler: the handler's future is `Send`, so the
//! router accepts it.
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use keel::sqlite::App;

async fn like(State(app): State<App>, Path(post_id): Path<i64>) -> StatusCode {
    let post_id = &post_id;
    let mut session = app.session();
    let liked = session
        .unit_of_work(async |tx| {
            keel::sqlx::query("UPDATE posts SET likes = likes + 1 WHERE id = $1")
                .bind(*post_id)
                .execute(tx.conn())
                .await?;
            Ok(())
        })
        .await;
    match liked {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn router(app: App) -> Router {
    Router::new().route("/posts/{id}/likes", post(like)).with_state(app)
}

fn main() {
    let _ = router;
}
