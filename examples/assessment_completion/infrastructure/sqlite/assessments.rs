use keel::Error;
use sqlx::{Sqlite, SqliteConnection};

use crate::domain::{Answer, Assessment, AssessmentId};
use crate::infrastructure::codes::Code;
use crate::infrastructure::rows::AssessmentRow;
use crate::ports::Assessments;

impl Assessments for Sqlite {
    async fn assessment(
        conn: &mut SqliteConnection,
        id: AssessmentId,
    ) -> Result<Option<Assessment>, Error> {
        let row: Option<AssessmentRow> = sqlx::query_as(
            "SELECT id, user_id, kind, state, campaign_participation_id, certification_course_id,
                    version
             FROM assessments WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(conn)
        .await?;
        row.map(Assessment::try_from).transpose()
    }

    async fn update_assessment_state(
        conn: &mut SqliteConnection,
        assessment: &Assessment,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE assessments SET state = $1 WHERE id = $2")
            .bind(assessment.state.code())
            .bind(assessment.id.0)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn answers(conn: &mut SqliteConnection, id: AssessmentId) -> Result<Vec<Answer>, Error> {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT competence_code, area_code, correct FROM answers WHERE assessment_id = $1
             ORDER BY competence_code",
        )
        .bind(id.0)
        .fetch_all(conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(competence_code, area_code, correct)| Answer {
                competence_code,
                area_code,
                correct,
            })
            .collect())
    }
}
