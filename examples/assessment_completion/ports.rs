//! The ports: what the use cases and handlers need from storage, as traits on the backend
//! type.
//!
//! Each trait is implemented by `sqlx::Postgres` (in `infrastructure/postgres/`) and by
//! `sqlx::Sqlite` (in `infrastructure/sqlite/`), with SQL written for that database. Every
//! method takes the driver's own connection, `&mut Conn<Self>` (`&mut PgConnection` or
//! `&mut SqliteConnection`): inside a unit of work that is `tx.conn()`, so the steps of a
//! use case run on its transaction; outside one, a connection from `db.acquire()`.
//!
//! A use case names only the ports it uses (`B: Assessments + Campaigns`) and is called as
//! `B::assessment(tx.conn(), id)`; it never sees SQL. Locking a row and moving its
//! version are Keel's (`tx.lock`, `tx.save_version`), not the adapters'.

use std::future::Future;

use keel::{Backend, Error, EventId};
use time::OffsetDateTime;

use crate::domain::{
    Answer, Assessment, AssessmentId, AssessmentResult, Badge, BadgeAcquisition,
    CampaignParticipation, PartnerSending, ResultStatus,
};

/// The driver connection of backend `B`: `PgConnection` or `SqliteConnection`.
pub type Conn<B> = <B as sqlx::Database>::Connection;

/// Assessments and their answers.
pub trait Assessments: Backend {
    /// The assessment, or `None` when no assessment has that id.
    fn assessment(
        conn: &mut Conn<Self>,
        id: AssessmentId,
    ) -> impl Future<Output = Result<Option<Assessment>, Error>> + Send;

    /// Stores the assessment's state (its version is moved by `tx.save_version`).
    fn update_assessment_state(
        conn: &mut Conn<Self>,
        assessment: &Assessment,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The answers of an assessment, the input of badges and scoring.
    fn answers(
        conn: &mut Conn<Self>,
        id: AssessmentId,
    ) -> impl Future<Output = Result<Vec<Answer>, Error>> + Send;
}

/// Campaign participations and badges.
pub trait Campaigns: Backend {
    /// Loads a campaign participation.
    fn participation(
        conn: &mut Conn<Self>,
        id: i64,
    ) -> impl Future<Output = Result<CampaignParticipation, Error>> + Send;

    /// Stores the participation's status.
    fn update_participation(
        conn: &mut Conn<Self>,
        participation: &CampaignParticipation,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The badges of a campaign.
    fn campaign_badges(
        conn: &mut Conn<Self>,
        campaign_id: i64,
    ) -> impl Future<Output = Result<Vec<Badge>, Error>> + Send;

    /// Saves acquired badges; a badge a user already holds is refused.
    fn add_badge_acquisitions(
        conn: &mut Conn<Self>,
        acquisitions: &[BadgeAcquisition],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether the user holds the badge with that key.
    fn holds_badge(
        conn: &mut Conn<Self>,
        user_id: i64,
        badge_key: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// Certification results and courses.
pub trait Certifications: Backend {
    /// Saves a result with its competence marks; one result per assessment.
    fn add_result(
        conn: &mut Conn<Self>,
        result: &AssessmentResult,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stamps the course's completion time.
    fn mark_course_completed(
        conn: &mut Conn<Self>,
        course_id: i64,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// What the handlers write after the commit.
pub trait Reactions: Backend {
    /// Adds one to the user's completed assessments.
    fn count_completion(
        conn: &mut Conn<Self>,
        user_id: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Records a notification the partner accepted.
    fn record_sending(
        conn: &mut Conn<Self>,
        sending: &PartnerSending,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Grants a partner certification (once per user and partner).
    fn add_partner_certification(
        conn: &mut Conn<Self>,
        user_id: i64,
        course_id: i64,
        partner_key: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The stored state, read in one go: what the story prints and the tests check.
pub trait Reports: Backend {
    /// Reads the [`Report`].
    fn report(conn: &mut Conn<Self>) -> impl Future<Output = Result<Report, Error>> + Send;
}

/// Every port: what the program needs of a backend.
pub trait Store: Assessments + Campaigns + Certifications + Reactions + Reports {}

impl<B: Assessments + Campaigns + Certifications + Reactions + Reports> Store for B {}

/// See [`Reports`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub assessments: Vec<Assessment>,
    pub participations: Vec<CampaignParticipation>,
    /// `(badge key, user id)`.
    pub acquired_badges: Vec<(String, i64)>,
    pub results: Vec<ResultLine>,
    /// `(course id, completed at)`.
    pub courses: Vec<(i64, Option<OffsetDateTime>)>,
    /// `(user id, completed assessments)`.
    pub statistics: Vec<(i64, i64)>,
    pub sendings: Vec<PartnerSending>,
    /// `(user id, partner key)`.
    pub partner_certifications: Vec<(i64, String)>,
    /// Events Keel recorded (in its `keel_events` table).
    pub events: i64,
    pub deliveries: Vec<Delivery>,
}

/// A stored certification result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultLine {
    pub assessment_id: i64,
    pub pix_score: i64,
    pub status: ResultStatus,
    pub competence_marks: i64,
}

/// One delivery of an event to a handler, as Keel stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event_id: EventId,
    pub event: String,
    pub handler: String,
    pub status: String,
    pub attempts: i64,
}
