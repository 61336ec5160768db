use keel::Error;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres};

use crate::domain::PartnerSending;
use crate::ports::Reactions;

impl Reactions for Postgres {
    async fn count_completion(conn: &mut PgConnection, user_id: i64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO user_statistics (user_id, completed_assessments) VALUES ($1, 1)
             ON CONFLICT (user_id) DO UPDATE
             SET completed_assessments = user_statistics.completed_assessments + 1",
        )
        .bind(user_id)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn record_sending(
        conn: &mut PgConnection,
        sending: &PartnerSending,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO partner_sendings (event_id, notification, response_code)
             VALUES ($1, $2, $3)",
        )
        .bind(sending.event_id.as_uuid())
        .bind(Json(&sending.notification))
        .bind(i32::from(sending.response_code))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn add_partner_certification(
        conn: &mut PgConnection,
        user_id: i64,
        course_id: i64,
        partner_key: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO partner_certifications (user_id, certification_course_id, partner_key)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(course_id)
        .bind(partner_key)
        .execute(conn)
        .await?;
        Ok(())
    }
}
