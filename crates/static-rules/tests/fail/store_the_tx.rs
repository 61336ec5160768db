//! Rule G3: the transaction handle cannot be stored outside its unit of work.
use keel::Error;
use keel::postgres::{App, Tx};

async fn escape(app: &App) -> Result<(), Error> {
    let mut kept: Vec<&mut Tx<'_>> = Vec::new();
    let kept = &mut kept;
    app.session()
        .unit_of_work(async |tx| {
            kept.push(tx);
            Ok(())
        })
        .await
}

fn main() {}
