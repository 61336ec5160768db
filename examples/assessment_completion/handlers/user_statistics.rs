use keel::{Error, HandlerContext};

use crate::domain::AssessmentCompleted;
use crate::ports::Reactions;

/// Counts a user's completed assessments.
///
/// Its unit of work marks the delivery processed in the same transaction as the increment,
/// so a repeated delivery of the same event changes nothing.
async fn count_completion<B: Reactions>(
    event: &AssessmentCompleted,
    ctx: &mut HandlerContext<B>,
) -> Result<(), Error> {
    let user_id = event.user_id;
    ctx.unit_of_work(async |tx| B::count_completion(tx.conn(), user_id).await)
        .await
}

// A generic handler is registered once per backend; `Registry::<B>::global()` keeps the
// registrations of its own backend.
#[cfg(feature = "postgres")]
keel::register_handler!(AssessmentCompleted => count_completion::<sqlx::Postgres>);
#[cfg(feature = "sqlite")]
keel::register_handler!(AssessmentCompleted => count_completion::<sqlx::Sqlite>);
