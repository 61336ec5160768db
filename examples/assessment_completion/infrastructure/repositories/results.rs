use keel::{Error, Tx, sqlx};

use crate::domain::{AssessmentResult, ResultStatus};

/// Saves a certification result with its competence marks. The result's id is the
/// assessment's: one result per assessment.
pub async fn save(tx: &mut Tx<'_>, result: &AssessmentResult) -> Result<(), Error> {
    let status = match result.status {
        ResultStatus::Validated => "validated",
        ResultStatus::Rejected => "rejected",
    };
    sqlx::query(
        "INSERT INTO assessment_results
         (id, assessment_id, emitter, pix_score, status, reproducibility_rate)
         VALUES ($1, $1, $2, $3, $4, $5)",
    )
    .bind(result.assessment_id)
    .bind(result.emitter)
    .bind(result.pix_score)
    .bind(status)
    .bind(result.reproducibility_rate)
    .execute(tx.conn())
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
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}
