//! A stopping process finishes the deliveries it started and gives back those it had
//! claimed but not started: due again at once for another relay, their attempt not counted,
//! instead of waiting for their lease or keeping the process up to run them.

use std::time::Duration;

use keel::{DeliveryOptions, Error};

use super::support::*;
use super::{App, B, Database, Handler, HandlerContext};

/// Half a second per delivery: the process is stopping before the queue behind it runs.
async fn slow(event: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    write_effect(event.seq, ctx).await
}

async fn a_stopping_process_gives_back_what_it_has_not_started(db: Database) {
    schema(&db).await;
    let options = || quick().max_in_flight(1);
    let first = App::builder(
        db.clone(),
        registry(vec![Handler::new::<Ticked, _>("slow", slow)]),
    )
    .delivery(options())
    .start();
    first
        .session()
        .unit_of_work(async |tx| {
            for seq in 0..5 {
                tx.record(Ticked { seq })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.shutdown().await.unwrap();
    let db = db.connect_again().await.unwrap();
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM effects").await,
        1,
        "one was running"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_deliveries
             WHERE leased_until IS NULL AND leased_by IS NULL AND attempts = 0"
        )
        .await,
        4,
        "the four not started are free, their attempt not counted"
    );
    let second = App::builder(
        db.clone(),
        registry(vec![Handler::new::<Ticked, _>("slow", slow)]),
    )
    .delivery(DeliveryOptions::default().poll_interval(Duration::from_millis(20)))
    .start();
    assert!(
        second
            .wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
    exactly_once(&db, 5, 1).await;
    second.shutdown().await.unwrap();
}

keel_testing::backend_tests!(a_stopping_process_gives_back_what_it_has_not_started);
