//! Rows as both adapters read them, and their conversion to the domain (`FromRow` works
//! on either driver's rows). Enums arrive as their codes (see `codes`); ids and counts whose
//! types differ between the drivers are type parameters.

use keel::{Error, EventId, Version};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{
    Assessment, AssessmentId, AssessmentKind, AssessmentState, CampaignParticipation,
    ParticipationStatus, PartnerNotification, PartnerSending, ResultStatus,
};
use crate::infrastructure::codes::Code;
use crate::ports::{Delivery, Report, ResultLine};

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

/// What both adapters read for the demo's report, with ids (`Id`) and attempt counts
/// (`Attempts`) in each driver's own types (a `uuid` and an `INTEGER` on PostgreSQL, text
/// and a 64-bit integer on SQLite).
pub struct ReportRows<Id, Attempts> {
    pub assessments: Vec<AssessmentRow>,
    pub participations: Vec<ParticipationRow>,
    pub acquired_badges: Vec<(String, i64)>,
    /// `(assessment id, pix score, status code, competence marks)`.
    pub results: Vec<(i64, i64, String, i64)>,
    pub courses: Vec<(i64, Option<OffsetDateTime>)>,
    pub statistics: Vec<(i64, i64)>,
    /// `(event id, notification, response code)`.
    pub sendings: Vec<(Id, Json<PartnerNotification>, i32)>,
    pub partner_certifications: Vec<(i64, String)>,
    pub events: i64,
    /// `(event id, event name, handler, status, attempts)`.
    pub deliveries: Vec<(Id, String, String, String, Attempts)>,
}

impl<Id: Into<Uuid>, Attempts: Into<i64>> TryFrom<ReportRows<Id, Attempts>> for Report {
    type Error = Error;
    fn try_from(rows: ReportRows<Id, Attempts>) -> Result<Self, Error> {
        Ok(Report {
            assessments: rows
                .assessments
                .into_iter()
                .map(Assessment::try_from)
                .collect::<Result<_, _>>()?,
            participations: rows
                .participations
                .into_iter()
                .map(CampaignParticipation::try_from)
                .collect::<Result<_, _>>()?,
            acquired_badges: rows.acquired_badges,
            results: rows
                .results
                .into_iter()
                .map(|(assessment_id, pix_score, status, competence_marks)| {
                    Ok(ResultLine {
                        assessment_id,
                        pix_score,
                        status: ResultStatus::parse(&status)?,
                        competence_marks,
                    })
                })
                .collect::<Result<_, Error>>()?,
            courses: rows.courses,
            statistics: rows.statistics,
            sendings: rows
                .sendings
                .into_iter()
                .map(|(event_id, Json(notification), code)| {
                    Ok(PartnerSending {
                        event_id: EventId::from_uuid(event_id.into()),
                        notification,
                        response_code: u16::try_from(code)
                            .map_err(|e| Error::Database(sqlx::Error::Decode(e.into())))?,
                    })
                })
                .collect::<Result<_, Error>>()?,
            partner_certifications: rows.partner_certifications,
            events: rows.events,
            deliveries: rows
                .deliveries
                .into_iter()
                .map(|(id, event, handler, status, attempts)| Delivery {
                    event_id: EventId::from_uuid(id.into()),
                    event,
                    handler,
                    status,
                    attempts: attempts.into(),
                })
                .collect(),
        })
    }
}
