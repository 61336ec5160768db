//! Infrastructure: one adapter folder per backend implementing the ports on the driver's
//! own connection (`postgres/` on `&mut PgConnection`, `sqlite/` on
//! `&mut SqliteConnection`), the codes and rows both share, and the
//! partner's HTTP client.

mod codes;
pub mod partner;
#[cfg(feature = "postgres")]
mod postgres;
mod rows;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;

use keel::{Database, Error};

use crate::domain::AssessmentId;
use crate::ports::{Conn, Store};

/// A backend the program runs on: the ports, plus the example's own tables on it.
pub trait Schema: Store {
    /// The example's migrations (`migrations/<backend>/`, embedded with `sqlx::migrate!`),
    /// applied at start with `Database::run_migrations` next to Keel's own and recorded in
    /// sqlx's `_sqlx_migrations` table.
    fn migrations() -> &'static sqlx::migrate::Migrator;

    /// Inserts the demo's rows (`demo_data.sql` of the adapter).
    fn insert_demo_data(conn: &mut Conn<Self>) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Seeds the demo's rows into the example's (empty) tables; `false`, changing nothing,
/// when they are there already. Tables are never dropped: their shape is the migrations'.
///
/// - assessment 1: campaign (participation 10 of user 7, campaign 100), started, 3 of 4
///   answers right (75%: earns the BRONZE badge, not GOLD);
/// - assessment 2: certification (course 20 of user 7), started, 7 of 8 answers right;
/// - assessment 3: campaign, aborted (cannot be completed);
/// - assessment 4: campaign (participation 11 of user 8), started, 1 of 2 answers right.
pub async fn seed_demo_data<B: Schema>(db: &Database<B>) -> Result<bool, Error> {
    let mut conn = db.acquire().await?;
    if B::assessment(&mut conn, AssessmentId(1)).await?.is_some() {
        return Ok(false);
    }
    B::insert_demo_data(&mut conn).await?;
    Ok(true)
}
