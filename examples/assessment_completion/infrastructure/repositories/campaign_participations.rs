use keel::{Error, Tx, sqlx};

use crate::domain::{CampaignParticipation, ParticipationStatus};

/// Loads a campaign participation.
pub async fn get(tx: &mut Tx<'_>, id: i64) -> Result<CampaignParticipation, Error> {
    let (campaign_id, status): (i64, String) =
        sqlx::query_as("SELECT campaign_id, status FROM campaign_participations WHERE id = $1")
            .bind(id)
            .fetch_one(tx.conn())
            .await?;
    let status = match status.as_str() {
        "Started" => ParticipationStatus::Started,
        "ToShare" => ParticipationStatus::ToShare,
        "Shared" => ParticipationStatus::Shared,
        other => {
            return Err(Error::Database(sqlx::Error::Decode(
                format!("campaign_participations.status holds unknown value `{other}`").into(),
            )));
        }
    };
    Ok(CampaignParticipation {
        id,
        campaign_id,
        status,
    })
}

/// Stores the participation's status.
pub async fn save(tx: &mut Tx<'_>, participation: &CampaignParticipation) -> Result<(), Error> {
    let updated = sqlx::query("UPDATE campaign_participations SET status = $1 WHERE id = $2")
        .bind(format!("{:?}", participation.status))
        .bind(participation.id)
        .execute(tx.conn())
        .await?
        .rows_affected();
    if updated != 1 {
        return Err(Error::Database(sqlx::Error::RowNotFound));
    }
    Ok(())
}
