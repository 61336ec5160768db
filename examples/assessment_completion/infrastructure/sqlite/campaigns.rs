use keel::Error;
use sqlx::{Sqlite, SqliteConnection};

use crate::domain::{Badge, BadgeAcquisition, CampaignParticipation};
use crate::infrastructure::codes::Code;
use crate::infrastructure::rows::ParticipationRow;
use crate::ports::Campaigns;

impl Campaigns for Sqlite {
    async fn participation(
        conn: &mut SqliteConnection,
        id: i64,
    ) -> Result<CampaignParticipation, Error> {
        let row: ParticipationRow = sqlx::query_as(
            "SELECT id, campaign_id, status FROM campaign_participations WHERE id = $1",
        )
        .bind(id)
        .fetch_one(conn)
        .await?;
        row.try_into()
    }

    async fn update_participation(
        conn: &mut SqliteConnection,
        participation: &CampaignParticipation,
    ) -> Result<(), Error> {
        let updated = sqlx::query("UPDATE campaign_participations SET status = $1 WHERE id = $2")
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
        conn: &mut SqliteConnection,
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

    /// One statement per badge: SQLite has no arrays, and its statements are cheap.
    async fn add_badge_acquisitions(
        conn: &mut SqliteConnection,
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
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn holds_badge(
        conn: &mut SqliteConnection,
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
