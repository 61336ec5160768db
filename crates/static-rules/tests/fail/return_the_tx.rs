//! Rule G3: the transaction handle cannot leave its unit of work.
use keel::Error;
use keel::postgres::App;

async fn escape(app: &App) -> Result<(), Error> {
    let mut session = app.session();
    let _tx = session.unit_of_work(async |tx| Ok(tx)).await?;
    Ok(())
}

fn main() {}
