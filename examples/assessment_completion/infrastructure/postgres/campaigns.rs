use keel::Error;
use sqlx::{PgConnection, Postgres};

use crate::domain::{Badge, BadgeAcquisition, CampaignParticipation};
use crate::infrastructure::codes::Code;
use crate::infrastructure::rows::ParticipationRow;
use crate::ports::Campaigns;

impl Campaigns for Postgres {
    async fn participation(
        conn: &mut PgConnection,
        id: i64,
    ) -> Result<CampaignParticipation, Error> {
        let row: ParticipationRow = sqlx::query_as(
            "SELECT id, campaign_id, status::text AS status FROM campaign_participations
             WHERE id = $1",
        )
        .bind(id)
        .fetch_one(conn)
        .await?;
        row.try_into()
    }

    async fn update_participation(
        conn: &mut PgConnection,
        participation: &CampaignParticipation,
    ) -> Result<(), Error> {
        let updated = sqlx::query(
            "UPDATE campaign_participations SET status = $1::participation_status WHERE id = $2",
        )
        .bind(participation.status.code())
        .bind(participation.id)
        .execute(conn)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(Error::Database(sqlx::Error::RowNotFound));
        }
        Ok(())
    }

    async fn campaign_badges(
        conn: &mut PgConnection,
        campaign_id: i64,
    ) -> Result<Vec<Badge>, Error> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT id, badge_key, min_mastery_rate FROM badges WHERE campaign_id = $1 ORDER BY id",
        )
        .bind(campaign_id)
        .fetch_all(conn)
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

    /// One statement for all of them: the columns travel as arrays.
    async fn add_badge_acquisitions(
        conn: &mut PgConnection,
        acquisitions: &[BadgeAcquisition],
    ) -> Result<(), Error> {
        let column =
            |f: fn(&BadgeAcquisition) -> i64| acquisitions.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO badge_acquisitions (badge_id, user_id, campaign_participation_id)
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[])",
        )
        .bind(column(|a| a.badge_id))
        .bind(column(|a| a.user_id))
        .bind(column(|a| a.campaign_participation_id))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn holds_badge(
        conn: &mut PgConnection,
        user_id: i64,
        badge_key: &str,
    ) -> Result<bool, Error> {
        let (held,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM badge_acquisitions a JOIN badges b ON b.id = a.badge_id
                            WHERE a.user_id = $1 AND b.badge_key = $2)",
        )
        .bind(user_id)
        .bind(badge_key)
        .fetch_one(conn)
        .await?;
        Ok(held)
    }
}
