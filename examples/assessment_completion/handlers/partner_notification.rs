use keel::{Error, HandlerContext, RetryPolicy};

use crate::domain::{AssessmentCompleted, PartnerNotification, PartnerSending};
use crate::infrastructure::partner;
use crate::ports::Reactions;

/// Tells the campaign's partner that a participation's results are ready, then records the
/// sending. The event id is the idempotency key: a repeated call changes nothing there, and
/// the recording (with the delivery's processed mark) happens once here.
async fn notify_partner<B: Reactions>(
    event: &AssessmentCompleted,
    ctx: &mut HandlerContext<B>,
) -> Result<(), Error> {
    let Some(campaign_participation_id) = event.campaign_participation_id else {
        return Ok(());
    };
    let notification = PartnerNotification {
        campaign_participation_id,
        user_id: event.user_id,
    };
    let event_id = ctx.event_id();
    let response_code = partner::notify(&event_id.to_string(), &notification).await?;
    let sending = PartnerSending {
        event_id,
        notification,
        response_code,
    };
    ctx.unit_of_work(async |tx| B::record_sending(tx.conn(), &sending).await)
        .await
}

/// An HTTP partner's outage lasts minutes: see [`partner::retry_policy`].
fn retry() -> RetryPolicy {
    partner::retry_policy()
}

#[cfg(feature = "postgres")]
keel::register_handler!(AssessmentCompleted => notify_partner::<sqlx::Postgres>, retry = retry());
#[cfg(feature = "sqlite")]
keel::register_handler!(AssessmentCompleted => notify_partner::<sqlx::Sqlite>, retry = retry());
