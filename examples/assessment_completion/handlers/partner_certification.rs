use keel::{Error, HandlerContext};

use crate::domain::CertificationScoringCompleted;
use crate::ports::{Campaigns, Reactions};

/// The partner's certification needs this Pix score and this badge.
const MIN_PIX_SCORE: i64 = 40;
const REQUIRED_BADGE: &str = "BRONZE";
const PARTNER: &str = "PARTNER-CLEA";

/// Grants the partner certification when the score and the badges qualify.
async fn grant_partner_certification<B: Campaigns + Reactions>(
    event: &CertificationScoringCompleted,
    ctx: &mut HandlerContext<B>,
) -> Result<(), Error> {
    let event = event.clone();
    ctx.unit_of_work(async |tx| {
        let qualifies = event.pix_score >= MIN_PIX_SCORE
            && B::holds_badge(tx.conn(), event.user_id, REQUIRED_BADGE).await?;
        if qualifies {
            let course_id = event.certification_course_id;
            B::add_partner_certification(tx.conn(), event.user_id, course_id, PARTNER).await?;
        }
        Ok(())
    })
    .await
}

#[cfg(feature = "postgres")]
keel::register_handler!(
    CertificationScoringCompleted => grant_partner_certification::<sqlx::Postgres>
);
#[cfg(feature = "sqlite")]
keel::register_handler!(
    CertificationScoringCompleted => grant_partner_certification::<sqlx::Sqlite>
);
