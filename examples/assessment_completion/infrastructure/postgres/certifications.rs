use keel::Error;
use sqlx::{PgConnection, Postgres};
use time::OffsetDateTime;

use crate::domain::AssessmentResult;
use crate::infrastructure::codes::Code;
use crate::ports::Certifications;

impl Certifications for Postgres {
    /// The result's id is the assessment's; its marks go in one statement, as arrays.
    async fn add_result(conn: &mut PgConnection, result: &AssessmentResult) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO assessment_results
             (id, assessment_id, emitter, pix_score, status, reproducibility_rate)
             VALUES ($1, $1, $2, $3, $4::result_status, $5)",
        )
        .bind(result.assessment_id)
        .bind(result.emitter)
        .bind(result.pix_score)
        .bind(result.status.code())
        .bind(result.reproducibility_rate)
        .execute(&mut *conn)
        .await?;
        let marks = &result.competence_marks;
        sqlx::query(
            "INSERT INTO competence_marks
             (assessment_result_id, competence_code, area_code, level, score)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::bigint[])",
        )
        .bind(result.assessment_id)
        .bind(
            marks
                .iter()
                .map(|m| m.competence_code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            marks
                .iter()
                .map(|m| m.area_code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(marks.iter().map(|m| m.level).collect::<Vec<_>>())
        .bind(marks.iter().map(|m| m.score).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn mark_course_completed(
        conn: &mut PgConnection,
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
