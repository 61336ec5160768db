//! Rule G2: a unit of work cannot open another one.
use keel::Error;
use keel::postgres::App;

async fn nested(app: &App) -> Result<(), Error> {
    let mut session = app.session();
    session
        .unit_of_work(async |_tx| {
            session.unit_of_work(async |_inner| Ok(())).await?;
            Ok(())
        })
        .await
}

fn main() {}
