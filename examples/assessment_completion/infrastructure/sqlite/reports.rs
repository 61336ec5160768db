use keel::Error;
use sqlx::types::Json;
use sqlx::types::uuid::fmt::Hyphenated;
use sqlx::{Sqlite, SqliteConnection};
use time::OffsetDateTime;

use crate::domain::PartnerNotification;
use crate::infrastructure::rows::{AssessmentRow, ParticipationRow, ReportRows};
use crate::ports::{Report, Reports};

impl Reports for Sqlite {
    async fn report(conn: &mut SqliteConnection) -> Result<Report, Error> {
        let assessments: Vec<AssessmentRow> = sqlx::query_as(
            "SELECT id, user_id, kind, state,
                    campaign_participation_id, certification_course_id, version
             FROM assessments ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let participations: Vec<ParticipationRow> = sqlx::query_as(
            "SELECT id, campaign_id, status FROM campaign_participations
             ORDER BY id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let acquired_badges = sqlx::query_as(
            "SELECT b.badge_key, a.user_id FROM badge_acquisitions a
             JOIN badges b ON b.id = a.badge_id ORDER BY b.id, a.user_id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let results: Vec<(i64, i64, String, i64)> = sqlx::query_as(
            "SELECT r.assessment_id, r.pix_score, r.status,
                    (SELECT COUNT(*) FROM competence_marks m WHERE m.assessment_result_id = r.id)
             FROM assessment_results r ORDER BY r.assessment_id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let courses: Vec<(i64, Option<OffsetDateTime>)> =
            sqlx::query_as("SELECT id, completed_at FROM certification_courses ORDER BY id")
                .fetch_all(&mut *conn)
                .await?;
        let statistics = sqlx::query_as(
            "SELECT user_id, completed_assessments FROM user_statistics ORDER BY user_id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let sendings: Vec<(Hyphenated, Json<PartnerNotification>, i32)> = sqlx::query_as(
            "SELECT event_id, notification, response_code FROM partner_sendings ORDER BY event_id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let partner_certifications = sqlx::query_as(
            "SELECT user_id, partner_key FROM partner_certifications ORDER BY user_id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM keel_events")
            .fetch_one(&mut *conn)
            .await?;
        let deliveries: Vec<(Hyphenated, String, String, String, i64)> = sqlx::query_as(
            "SELECT e.id, e.name, d.handler, d.status, d.attempts
             FROM (SELECT event_id, handler, status, attempts FROM keel_deliveries
                   UNION ALL
                   SELECT event_id, handler, 'done', attempts FROM keel_done) d
             JOIN keel_events e ON e.id = d.event_id ORDER BY e.id, d.handler",
        )
        .fetch_all(&mut *conn)
        .await?;
        ReportRows {
            assessments,
            participations,
            acquired_badges,
            results,
            courses,
            statistics,
            sendings,
            partner_certifications,
            events,
            deliveries,
        }
        .try_into()
    }
}
