//! Per-key serialization: commands with the same key never overlap and run in send order;
//! different keys run in parallel.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel::{Error, sqlx};

use super::support::*;
use super::{B, Database, Handler, HandlerContext};

struct Span {
    post_id: i64,
    user_id: i64,
    start: i64,
    end: i64,
}

fn micros() -> i64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_micros() as i64
}

/// Handles one vote at a time, recording when it ran (in its own unit of work).
async fn instrumented(vote: &VoteForPost, ctx: &mut HandlerContext) -> Result<(), Error> {
    let start = micros();
    tokio::time::sleep(Duration::from_millis(3)).await;
    let vote = vote.clone();
    ctx.unit_of_work(async |tx| {
        sqlx::query("UPDATE posts SET likes = likes + 1 WHERE id = $1")
            .bind(vote.post_id)
            .execute(tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO spans (post_id, user_id, start_us, end_us) VALUES ($1, $2, $3, $4)",
        )
        .bind(vote.post_id)
        .bind(vote.user_id)
        .bind(start)
        .bind(micros())
        .execute(tx.conn())
        .await?;
        Ok(())
    })
    .await
}

async fn same_key_commands_never_overlap_and_keep_their_order(db: Database) {
    schema(&db).await;
    db.execute_script(
        "CREATE TABLE spans (post_id BIGINT, user_id BIGINT, start_us BIGINT, end_us BIGINT)",
    )
    .await
    .unwrap();
    let app = app_with(
        &db,
        Handler::command::<VoteForPost, _>("instrumented", instrumented),
    );
    // Three posts, 40 votes each, sent in user order, interleaved between posts.
    let mut session = app.session();
    for user_id in 0..40 {
        for post_id in 1..=3 {
            session
                .send(VoteForPost { post_id, user_id })
                .await
                .unwrap();
        }
    }
    delivered(&app).await;
    let mut conn = db.acquire().await.unwrap();
    let rows: Vec<(i64, i64, i64, i64)> =
        sqlx::query_as("SELECT post_id, user_id, start_us, end_us FROM spans")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    drop(conn);
    app.shutdown().await.unwrap();
    let spans: Vec<Span> = rows
        .into_iter()
        .map(|(post_id, user_id, start, end)| Span {
            post_id,
            user_id,
            start,
            end,
        })
        .collect();
    assert_eq!(spans.len(), 120);
    for post_id in 1..=3 {
        let mut mine: Vec<&Span> = spans.iter().filter(|s| s.post_id == post_id).collect();
        mine.sort_by_key(|s| s.start);
        let users: Vec<i64> = mine.iter().map(|s| s.user_id).collect();
        assert_eq!(
            users,
            (0..40).collect::<Vec<_>>(),
            "post {post_id} out of order"
        );
        for pair in mine.windows(2) {
            assert!(
                pair[0].end <= pair[1].start,
                "post {post_id}: votes {} and {} overlapped",
                pair[0].user_id,
                pair[1].user_id
            );
        }
    }
    // Different keys proceeded in parallel at least once.
    let overlapping = spans.iter().any(|a| {
        spans
            .iter()
            .any(|b| a.post_id != b.post_id && a.start < b.end && b.start < a.end)
    });
    assert!(overlapping, "different keys never ran at the same time");
}

keel_testing::backend_tests!(same_key_commands_never_overlap_and_keep_their_order);
