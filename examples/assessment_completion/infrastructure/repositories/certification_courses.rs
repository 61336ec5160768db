use keel::{Error, Tx, sqlx};

/// Stamps the course's completion time (UTC, RFC 3339).
pub async fn mark_completed(tx: &mut Tx<'_>, course_id: i64) -> Result<(), Error> {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(Error::rejected)?;
    sqlx::query("UPDATE certification_courses SET completed_at = $1 WHERE id = $2")
        .bind(now)
        .bind(course_id)
        .execute(tx.conn())
        .await?;
    Ok(())
}
