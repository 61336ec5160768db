use keel::{Error, HandlerContext, sqlx};

use crate::domain::AssessmentCompleted;

/// Counts a user's completed assessments.
///
/// Its unit of work marks the delivery processed in the same transaction as the increment,
/// so a repeated delivery of the same event changes nothing.
async fn count_completion(
    event: &AssessmentCompleted,
    ctx: &mut HandlerContext,
) -> Result<(), Error> {
    let user_id = event.user_id;
    ctx.unit_of_work(async |tx| {
        sqlx::query(
            "INSERT INTO user_statistics (user_id, completed_assessments) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE
             SET completed_assessments = user_statistics.completed_assessments + 1",
        )
        .bind(user_id)
        .execute(tx.conn())
        .await?;
        Ok(())
    })
    .await
}

keel::register_handler!(AssessmentCompleted => count_completion);
