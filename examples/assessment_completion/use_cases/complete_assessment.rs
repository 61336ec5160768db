use std::time::Duration;

use keel::{Error, Session, UnitOfWork};
use serde::Serialize;

use crate::domain::{
    AssessmentCompleted, AssessmentId, AssessmentKind, CertificationScoringCompleted, ResultStatus,
    earned, mastery_rate, score,
};
use crate::infrastructure::repositories::{
    answers, assessments, badges, campaign_participations, certification_courses, results,
};

/// What a completion changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    pub assessment_id: i64,
    pub user_id: i64,
    pub version: i64,
    pub campaign_participation_id: Option<i64>,
    pub badges: Vec<String>,
    pub pix_score: Option<i64>,
    pub certified: Option<bool>,
}

/// Completes an assessment.
///
/// Every step below must succeed or fail together, so they are one unit of work: one
/// transaction on one connection, re-run as a whole if the database asks (deadlock, lock
/// timeout, version conflict). Nothing here dispatches anything: the events are recorded,
/// and delivered to their handlers only after the commit.
pub async fn complete_assessment(
    session: &mut Session<'_>,
    id: AssessmentId,
) -> Result<Completion, Error> {
    let options = UnitOfWork::named("complete_assessment").lock_timeout(Duration::from_secs(2));
    session
        .unit_of_work_with(&options, async |tx| {
            // 1. Load and lock the assessment; refuse if it cannot be completed.
            let mut assessment = assessments::get_for_update(tx, id).await?;
            assessment.complete()?;
            assessment.version = assessments::save(tx, &assessment).await?;
            let mut completion = Completion {
                assessment_id: id.0,
                user_id: assessment.user_id,
                version: assessment.version.get(),
                campaign_participation_id: assessment.campaign_participation_id,
                badges: Vec::new(),
                pix_score: None,
                certified: None,
            };

            // 2. A campaign: the participation's results are ready to share; badges whose
            //    criteria are met are acquired.
            if let Some(participation_id) = assessment.campaign_participation_id {
                let mut participation = campaign_participations::get(tx, participation_id).await?;
                participation.assessment_completed();
                campaign_participations::save(tx, &participation).await?;

                let rate = mastery_rate(&answers::of(tx, id).await?);
                let campaign_badges = badges::of_campaign(tx, participation.campaign_id).await?;
                let acquired = earned(&campaign_badges, rate, assessment.user_id, participation_id);
                badges::save_acquisitions(tx, &acquired).await?;
                completion.badges = campaign_badges
                    .iter()
                    .filter(|b| acquired.iter().any(|a| a.badge_id == b.id))
                    .map(|b| b.key.clone())
                    .collect();
            }

            // 3. A certification: score it from the answers, save the result and its
            //    competence marks, stamp the course.
            if let (AssessmentKind::Certification, Some(course_id)) =
                (assessment.kind, assessment.certification_course_id)
            {
                let result = score(id.0, &answers::of(tx, id).await?);
                results::save(tx, &result).await?;
                certification_courses::mark_completed(tx, course_id).await?;
                completion.pix_score = Some(result.pix_score);
                completion.certified = Some(result.status == ResultStatus::Validated);
                tx.record(CertificationScoringCompleted {
                    certification_course_id: course_id,
                    user_id: assessment.user_id,
                    reproducibility_rate: result.reproducibility_rate,
                    pix_score: result.pix_score,
                })?;
            }

            tx.record(AssessmentCompleted {
                assessment_id: id.0,
                user_id: assessment.user_id,
                campaign_participation_id: assessment.campaign_participation_id,
                certification_course_id: assessment.certification_course_id,
            })?;
            Ok(completion)
        })
        .await
}
