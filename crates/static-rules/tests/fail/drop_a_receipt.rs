//! A receipt dropped without releasing its events is flagged (denied here to show it).
#![deny(unused_must_use)]
use keel::Error;
use keel::postgres::Database;

async fn forget(db: &mut Database) -> Result<(), Error> {
    db.unit_of_work(async |_tx| Ok(())).await?;
    Ok(())
}

fn main() {}
