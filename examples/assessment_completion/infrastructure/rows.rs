//! Rows as both adapters read them, and their conversion to the domain (`FromRow` works
//! on either driver's rows). Enums arrive as their codes (see `codes`).

use keel::{Error, Version};

use crate::domain::{
    Assessment, AssessmentId, AssessmentKind, AssessmentState, CampaignParticipation,
    ParticipationStatus,
};
use crate::infrastructure::codes::Code;

/// A row of `assessments`.
#[derive(sqlx::FromRow)]
pub struct AssessmentRow {
    id: i64,
    user_id: i64,
    kind: String,
    state: String,
    campaign_participation_id: Option<i64>,
    certification_course_id: Option<i64>,
    version: i64,
}

impl TryFrom<AssessmentRow> for Assessment {
    type Error = Error;
    fn try_from(row: AssessmentRow) -> Result<Self, Error> {
        Ok(Assessment {
            id: AssessmentId(row.id),
            user_id: row.user_id,
            kind: AssessmentKind::parse(&row.kind)?,
            state: AssessmentState::parse(&row.state)?,
            campaign_participation_id: row.campaign_participation_id,
            certification_course_id: row.certification_course_id,
            version: Version::new(row.version),
        })
    }
}

/// A row of `campaign_participations`.
#[derive(sqlx::FromRow)]
pub struct ParticipationRow {
    id: i64,
    campaign_id: i64,
    status: String,
}

impl TryFrom<ParticipationRow> for CampaignParticipation {
    type Error = Error;
    fn try_from(row: ParticipationRow) -> Result<Self, Error> {
        Ok(CampaignParticipation {
            id: row.id,
            campaign_id: row.campaign_id,
            status: ParticipationStatus::parse(&row.status)?,
        })
    }
}
