//! Rule G2: the steps of a unit of work cannot reach the pool through the session.
use keel::Error;
use keel::postgres::App;

async fn count(app: &App) -> Result<(), Error> {
    let mut session = app.session();
    session
        .unit_of_work(async |_tx| {
            let _second_connection = session.acquire().await?;
            Ok(())
        })
        .await
}

fn main() {}
