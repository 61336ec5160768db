use keel::{Error, HandlerContext, sqlx};

use crate::domain::CertificationScoringCompleted;
use crate::infrastructure::repositories::badges;

/// The partner's certification needs this Pix score and this badge.
const MIN_PIX_SCORE: i64 = 40;
const REQUIRED_BADGE: &str = "BRONZE";
const PARTNER: &str = "PARTNER-CLEA";

/// Grants the partner certification when the score and the badges qualify.
async fn grant_partner_certification(
    event: &CertificationScoringCompleted,
    ctx: &mut HandlerContext,
) -> Result<(), Error> {
    let event = event.clone();
    ctx.unit_of_work(async |tx| {
        let qualifies = event.pix_score >= MIN_PIX_SCORE
            && badges::user_holds(tx, event.user_id, REQUIRED_BADGE).await?;
        if qualifies {
            sqlx::query(
                "INSERT INTO partner_certifications (user_id, certification_course_id, partner_key)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(event.user_id)
            .bind(event.certification_course_id)
            .bind(PARTNER)
            .execute(tx.conn())
            .await?;
        }
        Ok(())
    })
    .await
}

keel::register_handler!(CertificationScoringCompleted => grant_partner_certification);
