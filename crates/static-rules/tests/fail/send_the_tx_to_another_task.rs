//! Rules G2/G3: a spawned task outlives the unit of work, so it cannot get the `Tx`.
use keel::Error;
use keel::postgres::App;

async fn background(app: &App) -> Result<(), Error> {
    app.session()
        .unit_of_work(async |tx| {
            tokio::spawn(async move {
                let _ = keel::sqlx::query("SELECT 1").execute(tx.conn()).await;
            });
            Ok(())
        })
        .await
}

fn main() {}
