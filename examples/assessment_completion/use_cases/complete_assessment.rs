use std::time::Duration;

use keel::{Error, Session, UnitOfWork};

use crate::domain::{AssessmentCompleted, AssessmentId, AssessmentKind};
use crate::infrastructure::repositories::{
    assessments, campaign_participations, certification_courses,
};

/// Completes an assessment. Every step below succeeds or fails together: one unit of
/// work, one transaction, one connection, re-run as a whole if the database asks.
/// `AssessmentCompleted` is recorded, and delivered to its handlers after the commit.
pub async fn complete_assessment(
    session: &mut Session<'_>,
    id: AssessmentId,
) -> Result<String, Error> {
    let options = UnitOfWork::named("complete_assessment").lock_timeout(Duration::from_secs(2));
    session
        .unit_of_work_with(&options, async |tx| {
            let mut assessment = assessments::get_for_update(tx, id).await?;
            assessment.complete()?;
            assessment.version = assessments::save(tx, &assessment).await?;
            let mut done = format!(
                "assessment {id} of user {} completed ({})",
                assessment.user_id, assessment.version
            );

            if let Some(participation_id) = assessment.campaign_participation_id {
                let mut participation = campaign_participations::get(tx, participation_id).await?;
                participation.assessment_completed();
                campaign_participations::save(tx, &participation).await?;
                done += &format!(
                    ", participation {participation_id} {:?}",
                    participation.status
                );
            }
            if let (AssessmentKind::Certification, Some(course_id)) =
                (assessment.kind, assessment.certification_course_id)
            {
                certification_courses::mark_completed(tx, course_id).await?;
                done += &format!(", certification course {course_id} completed");
            }
            tx.record(AssessmentCompleted {
                assessment_id: id.0,
                user_id: assessment.user_id,
                campaign_participation_id: assessment.campaign_participation_id,
                certification_course_id: assessment.certification_course_id,
            })?;
            Ok(done)
        })
        .await
}
