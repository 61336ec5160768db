use keel::{Error, Locked, RowLock, Tx, Version, sqlx};

use crate::domain::{Assessment, AssessmentId, AssessmentKind, AssessmentState};

/// The assessment does not exist.
#[derive(Debug, thiserror::Error)]
#[error("assessment {0} not found")]
pub struct AssessmentNotFound(pub AssessmentId);
impl keel::Rejection for AssessmentNotFound {}

/// Loads an assessment and locks its row until the unit of work ends.
pub async fn get_for_update(tx: &mut Tx<'_>, id: AssessmentId) -> Result<Assessment, Error> {
    if tx.lock(RowLock::for_update("assessments", id)).await? == Locked::Missing {
        return Err(AssessmentNotFound(id).into());
    }
    let (user_id, kind, state, participation, course, version): (
        i64,
        String,
        String,
        Option<i64>,
        Option<i64>,
        i64,
    ) = sqlx::query_as(
        "SELECT user_id, kind, state, campaign_participation_id, certification_course_id, version
         FROM assessments WHERE id = $1",
    )
    .bind(id.0)
    .fetch_one(tx.conn())
    .await?;
    Ok(Assessment {
        id,
        user_id,
        kind: parse_kind(&kind)?,
        state: parse_state(&state)?,
        campaign_participation_id: participation,
        certification_course_id: course,
        version: Version::new(version),
    })
}

/// Stores the assessment's state, checking and moving its version.
pub async fn save(tx: &mut Tx<'_>, assessment: &Assessment) -> Result<Version, Error> {
    let version = tx.save_version("assessments", assessment).await?;
    sqlx::query("UPDATE assessments SET state = $1 WHERE id = $2")
        .bind(format!("{:?}", assessment.state))
        .bind(assessment.id.0)
        .execute(tx.conn())
        .await?;
    Ok(version)
}

fn parse_kind(text: &str) -> Result<AssessmentKind, Error> {
    Ok(match text {
        "Certification" => AssessmentKind::Certification,
        "CompetenceEvaluation" => AssessmentKind::CompetenceEvaluation,
        "Campaign" => AssessmentKind::Campaign,
        "Demo" => AssessmentKind::Demo,
        "Preview" => AssessmentKind::Preview,
        other => return Err(corrupt("kind", other)),
    })
}

fn parse_state(text: &str) -> Result<AssessmentState, Error> {
    Ok(match text {
        "Started" => AssessmentState::Started,
        "Completed" => AssessmentState::Completed,
        "Aborted" => AssessmentState::Aborted,
        "EndedBySupervisor" => AssessmentState::EndedBySupervisor,
        "EndedDueToFinalization" => AssessmentState::EndedDueToFinalization,
        other => return Err(corrupt("state", other)),
    })
}

fn corrupt(column: &str, value: &str) -> Error {
    Error::Database(sqlx::Error::Decode(
        format!("assessments.{column} holds unknown value `{value}`").into(),
    ))
}
