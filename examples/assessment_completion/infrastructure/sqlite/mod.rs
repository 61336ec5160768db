//! The SQLite adapter: the ports on `&mut SqliteConnection`. SQLite has no enum, boolean,
//! UUID or time types: the migrations use STRICT tables with `CHECK`ed text codes, 0/1
//! integers, hyphenated UUID text (as Keel stores event ids) and the text sqlx writes for
//! `time::OffsetDateTime`.

mod assessments;
mod campaigns;
mod certifications;
mod reactions;
mod reports;

use keel::Error;
use sqlx::migrate::Migrator;
use sqlx::{Sqlite, SqliteConnection};

use crate::infrastructure::Schema;

/// The example's migrations on SQLite, embedded at compile time.
static MIGRATIONS: Migrator = sqlx::migrate!("examples/assessment_completion/migrations/sqlite");

impl Schema for Sqlite {
    fn migrations() -> &'static Migrator {
        &MIGRATIONS
    }

    async fn insert_demo_data(conn: &mut SqliteConnection) -> Result<(), Error> {
        sqlx::raw_sql(include_str!("demo_data.sql"))
            .execute(conn)
            .await?;
        Ok(())
    }
}
