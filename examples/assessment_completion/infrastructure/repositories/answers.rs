use keel::{Error, Tx, sqlx};

use crate::domain::{Answer, AssessmentId};

/// The answers of an assessment, the input of badges and scoring.
pub async fn of(tx: &mut Tx<'_>, id: AssessmentId) -> Result<Vec<Answer>, Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT competence_code, area_code, correct FROM answers WHERE assessment_id = $1
         ORDER BY competence_code",
    )
    .bind(id.0)
    .fetch_all(tx.conn())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(competence_code, area_code, correct)| Answer {
            competence_code,
            area_code,
            correct: correct != 0,
        })
        .collect())
}
