//! Under a backlog the relay's claims start where its last full claim ended, past the
//! deliveries it leased (see the dispatcher's `cursor` module). A delivery due before that
//! point (a lease that expired, a lease released, a commit whose transaction began before
//! others) must not wait for the end of the backlog: a claim starts from the first due
//! delivery at least every 100 ms.

use std::sync::Mutex;
use std::time::Duration;

use keel::{DeliveryOptions, Error};

use super::support::OrderPlaced;
use super::{App, Handler, HandlerContext, POSTGRES, Registry};

const BACKLOG: i64 = 800;
const LATE: i64 = -1;

/// Order ids in the order their handler ran.
static RAN: Mutex<Vec<i64>> = Mutex::new(Vec::new());

fn ran() -> Vec<i64> {
    RAN.lock().unwrap().clone()
}

async fn slow(event: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    RAN.lock().unwrap().push(event.order_id);
    tokio::time::sleep(Duration::from_millis(8)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_due_before_the_claims_cursor_does_not_wait_for_the_backlog() {
    let Some(test) = keel_testing::TestDatabase::<super::B>::new().await else {
        return;
    };
    let db = test.database().clone();
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("slow", slow))
        .unwrap();
    // Small claims, each full while the backlog lasts; no poll to rescue the late one.
    let options = DeliveryOptions::default()
        .max_in_flight(4)
        .batch_size(4)
        .poll_interval(Duration::from_secs(60));
    let app = App::builder(db.clone(), registry).delivery(options).start();
    let mut other = db.connect_again().await.unwrap();
    let _receipt = other
        .unit_of_work(async |tx| {
            for order_id in 0..BACKLOG {
                tx.record(OrderPlaced { order_id })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    if !POSTGRES {
        app.dispatcher().wake_relay();
    }
    while ran().len() < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Committed now, then made due an hour ago: before every delivery of the backlog, so
    // before the point the relay's claims start from.
    let late = other
        .unit_of_work(async |tx| tx.record(OrderPlaced { order_id: LATE }))
        .await
        .unwrap();
    let backdate = if POSTGRES {
        "UPDATE keel_deliveries SET next_attempt_at = next_attempt_at - interval '1 hour'
         WHERE event_id = $1::uuid"
    } else {
        "UPDATE keel_deliveries SET next_attempt_at = next_attempt_at - 3600000
         WHERE event_id = $1"
    };
    let mut conn = db.acquire().await.unwrap();
    let backdated = keel::sqlx::query(backdate)
        .bind(late.events()[0].id.to_string())
        .execute(&mut *conn)
        .await
        .unwrap()
        .rows_affected();
    drop(conn);
    assert_eq!(
        backdated, 1,
        "the late delivery was claimed before it was due first"
    );
    let at_backdate = ran().len();

    assert!(
        app.wait_until_delivered(Duration::from_secs(60))
            .await
            .unwrap()
    );
    app.shutdown().await.unwrap();
    let ran = ran();
    let position = ran
        .iter()
        .position(|id| *id == LATE)
        .expect("the late one ran");
    assert!(
        position < at_backdate + 200,
        "the delivery due before the claims' cursor ran {} deliveries after it was due (of \
         {} left): it waited for the backlog",
        position - at_backdate,
        BACKLOG as usize - at_backdate
    );
}
