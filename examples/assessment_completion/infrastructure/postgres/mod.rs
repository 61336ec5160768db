//! The PostgreSQL adapter: the ports on `&mut PgConnection`, with native types (enum
//! types, `boolean`, `timestamptz`, `uuid`, `jsonb`, arrays).
//!
//! Enum columns are read as `column::text` and written as `$n::enum_type`, with the codes
//! of `infrastructure::codes`.

mod assessments;
mod campaigns;
mod certifications;
mod reactions;
mod reports;

use keel::Error;
use sqlx::migrate::Migrator;
use sqlx::{PgConnection, Postgres};

use crate::infrastructure::Schema;

/// The example's migrations on PostgreSQL, embedded at compile time.
static MIGRATIONS: Migrator = sqlx::migrate!("examples/assessment_completion/migrations/postgres");

impl Schema for Postgres {
    fn migrations() -> &'static Migrator {
        &MIGRATIONS
    }

    async fn insert_demo_data(conn: &mut PgConnection) -> Result<(), Error> {
        sqlx::raw_sql(include_str!("demo_data.sql"))
            .execute(conn)
            .await?;
        Ok(())
    }
}
