use keel::{Error, HandlerContext, sqlx};

use crate::domain::AssessmentCompleted;

/// Counts a user's completed assessments.
///
/// Idempotent: the event id is stored with the increment, so a repeated delivery of the
/// same event changes nothing.
async fn count_completion(
    event: &AssessmentCompleted,
    ctx: &mut HandlerContext,
) -> Result<(), Error> {
    let event_id = ctx.event_id().to_string();
    let user_id = event.user_id;
    let (event_id, user_id) = (&event_id, &user_id);
    ctx.unit_of_work(async |tx| {
        let inserted = sqlx::query(
            "INSERT INTO user_statistics_events (event_id) VALUES ($1) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id.as_str())
        .execute(tx.conn())
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO user_statistics (user_id, completed_assessments) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE
             SET completed_assessments = user_statistics.completed_assessments + 1",
        )
        .bind(*user_id)
        .execute(tx.conn())
        .await?;
        Ok(())
    })
    .await
}

keel::register_handler!(AssessmentCompleted => count_completion);
