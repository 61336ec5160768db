use std::time::Duration;

use keel::{Error, Locked, RowLock, Session, Tx, UnitOfWorkOptions};
use serde::Serialize;
use time::OffsetDateTime;

use crate::domain::{
    Assessment, AssessmentCompleted, AssessmentId, AssessmentKind, AssessmentNotFound,
    CertificationScoringCompleted, ResultStatus, earned, mastery_rate, score,
};
use crate::ports::{Assessments, Campaigns, Certifications};

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

/// Completes an assessment, on any backend whose adapters implement the ports it uses.
///
/// Every step below must succeed or fail together, so they are one unit of work: one
/// transaction on one connection, re-run as a whole if the database asks (deadlock, lock
/// timeout, version conflict). Nothing here dispatches anything: the events are recorded,
/// and delivered to their handlers only after the commit.
pub async fn complete_assessment<B>(
    session: &mut Session<'_, B>,
    id: AssessmentId,
) -> Result<Completion, Error>
where
    B: Assessments + Campaigns + Certifications,
{
    let options =
        UnitOfWorkOptions::named("complete_assessment").lock_timeout(Duration::from_secs(2));
    session
        .unit_of_work_with(&options, async |tx| {
            // 1. Load and lock the assessment; refuse if it cannot be completed.
            let mut assessment = get_for_update(tx, id).await?;
            assessment.complete()?;
            assessment.version = tx.save_version("assessments", &assessment).await?;
            B::update_assessment_state(tx.conn(), &assessment).await?;
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
                let mut participation = B::participation(tx.conn(), participation_id).await?;
                participation.assessment_completed();
                B::update_participation(tx.conn(), &participation).await?;

                let rate = mastery_rate(&B::answers(tx.conn(), id).await?);
                let badges = B::campaign_badges(tx.conn(), participation.campaign_id).await?;
                let acquired = earned(&badges, rate, assessment.user_id, participation_id);
                B::add_badge_acquisitions(tx.conn(), &acquired).await?;
                completion.badges = badges
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
                let result = score(id.0, &B::answers(tx.conn(), id).await?);
                B::add_result(tx.conn(), &result).await?;
                B::mark_course_completed(tx.conn(), course_id, OffsetDateTime::now_utc()).await?;
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

/// Loads an assessment and locks its row until the unit of work ends, so that of two
/// concurrent completions the second sees the first's result.
async fn get_for_update<B: Assessments>(
    tx: &mut Tx<'_, B>,
    id: AssessmentId,
) -> Result<Assessment, Error> {
    if tx.lock(RowLock::for_update("assessments", id)).await? == Locked::Missing {
        return Err(AssessmentNotFound(id).into());
    }
    B::assessment(tx.conn(), id)
        .await?
        .ok_or_else(|| AssessmentNotFound(id).into())
}
