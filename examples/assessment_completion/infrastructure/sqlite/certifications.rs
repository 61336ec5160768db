use keel::Error;
use sqlx::{Sqlite, SqliteConnection};
use time::OffsetDateTime;

use crate::domain::AssessmentResult;
use crate::infrastructure::codes::Code;
use crate::ports::Certifications;

impl Certifications for Sqlite {
    /// The result's id is the assessment's; one statement per competence mark.
    async fn add_result(
        conn: &mut SqliteConnection,
        result: &AssessmentResult,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO assessment_results
             (id, assessment_id, emitter, pix_score, status, reproducibility_rate)
             VALUES ($1, $1, $2, $3, $4, $5)",
        )
        .bind(result.assessment_id)
        .bind(result.emitter)
        .bind(result.pix_score)
        .bind(result.status.code())
        .bind(result.reproducibility_rate)
        .execute(&mut *conn)
        .await?;
        for mark in &result.competence_marks {
            sqlx::query(
                "INSERT INTO competence_marks
                 (assessment_result_id, competence_code, area_code, level, score)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(result.assessment_id)
            .bind(mark.competence_code.as_str())
            .bind(mark.area_code.as_str())
            .bind(mark.level)
            .bind(mark.score)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn mark_course_completed(
        conn: &mut SqliteConnection,
        course_id: i64,
        at: OffsetDateTime,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE certification_courses SET completed_at = $1 WHERE id = $2")
            .bind(at)
            .bind(course_id)
            .execute(conn)
            .await?;
        Ok(())
    }
}
