use keel::{Error, Tx, sqlx};

use crate::domain::{Badge, BadgeAcquisition};

/// The badges of a campaign.
pub async fn of_campaign(tx: &mut Tx<'_>, campaign_id: i64) -> Result<Vec<Badge>, Error> {
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT id, badge_key, min_mastery_rate FROM badges WHERE campaign_id = $1 ORDER BY id",
    )
    .bind(campaign_id)
    .fetch_all(tx.conn())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, key, min_mastery_rate)| Badge {
            id,
            key,
            min_mastery_rate,
        })
        .collect())
}

/// Saves acquired badges.
pub async fn save_acquisitions(
    tx: &mut Tx<'_>,
    acquisitions: &[BadgeAcquisition],
) -> Result<(), Error> {
    for acquisition in acquisitions {
        sqlx::query(
            "INSERT INTO badge_acquisitions (badge_id, user_id, campaign_participation_id)
             VALUES ($1, $2, $3)",
        )
        .bind(acquisition.badge_id)
        .bind(acquisition.user_id)
        .bind(acquisition.campaign_participation_id)
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

/// Whether the user holds the badge with that key.
pub async fn user_holds(tx: &mut Tx<'_>, user_id: i64, badge_key: &str) -> Result<bool, Error> {
    let held = sqlx::query(
        "SELECT 1 FROM badge_acquisitions a JOIN badges b ON b.id = a.badge_id
         WHERE a.user_id = $1 AND b.badge_key = $2",
    )
    .bind(user_id)
    .bind(badge_key)
    .fetch_optional(tx.conn())
    .await?;
    Ok(held.is_some())
}
