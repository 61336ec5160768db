//! A forgotten `?`: the dispatcher names the `Result` it was given.
use keel::Error;
use keel::postgres::{Database, Dispatcher};

async fn like(db: &mut Database, dispatcher: &Dispatcher) -> Result<(), Error> {
    let receipt = db.unit_of_work(async |_tx| Ok(())).await;
    dispatcher.dispatch(receipt)?;
    Ok(())
}

fn main() {}
