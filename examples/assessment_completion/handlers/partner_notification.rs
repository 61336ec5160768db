use keel::{Error, HandlerContext, sqlx};

use crate::domain::AssessmentCompleted;
use crate::infrastructure::partner;

/// Tells the campaign's partner that a participation's results are ready, then records the
/// sending. The event id is the idempotency key: a repeated call changes nothing there, and
/// the recording (with the delivery's processed mark) happens once here.
async fn notify_partner(
    event: &AssessmentCompleted,
    ctx: &mut HandlerContext,
) -> Result<(), Error> {
    let Some(participation_id) = event.campaign_participation_id else {
        return Ok(());
    };
    let key = ctx.event_id().to_string();
    let status = partner::notify(&key, participation_id, event.user_id).await?;
    let key = &key;
    ctx.unit_of_work(async |tx| {
        sqlx::query(
            "INSERT INTO partner_sendings (event_id, campaign_participation_id, response_code)
             VALUES ($1, $2, $3)",
        )
        .bind(key.as_str())
        .bind(participation_id)
        .bind(i64::from(status))
        .execute(tx.conn())
        .await?;
        Ok(())
    })
    .await
}

keel::register_handler!(
    AssessmentCompleted => notify_partner,
    retry = keel::RetryPolicy::default()
        .max_attempts(6)
        .base_delay(std::time::Duration::from_millis(50))
);
