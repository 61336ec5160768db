//! Rule G1: only a commit makes a receipt.
use keel::Committed;
use keel::postgres::Dispatcher;

fn forge(dispatcher: &Dispatcher) {
    let receipt = Committed {
        value: (),
        events: Vec::new(),
    };
    let _ = dispatcher.dispatch(receipt);
}

fn main() {}
