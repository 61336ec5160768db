//! PostgreSQL restarts mid-run (`pg_ctl restart`): the relay reconnects, nothing is lost.
//!
//! Restarting the server would break every other test running at the same time, so this
//! test is `#[ignore]`d and `scripts/test.sh` runs it on its own, with
//! `KEEL_TEST_PG_RESTART` set to the command that restarts the test cluster.

use std::time::Duration;

use keel::DeliveryOptions;
use keel_testing::TestDatabase;

use super::support::*;
use super::{App, B, Database};

const EVENTS: i64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the PostgreSQL server; run alone by scripts/test.sh"]
async fn the_relay_survives_a_postgres_restart() {
    let restart = std::env::var("KEEL_TEST_PG_RESTART")
        .expect("KEEL_TEST_PG_RESTART names the command that restarts the test server");
    let test_db = TestDatabase::<B>::new().await.expect("PostgreSQL");
    let db = test_db.database().clone();
    schema(&db).await;
    let options = DeliveryOptions::default()
        .poll_interval(Duration::from_millis(20))
        .handler_timeout(Duration::from_secs(2))
        .lease(Duration::from_secs(4));
    let app = App::builder(db.clone(), both_effects())
        .delivery(options)
        .start();

    let producer = {
        let mut db: Database = app.database().clone();
        tokio::spawn(async move {
            // Keep producing through the restart: a failed unit of work is simply retried.
            loop {
                match produce(&mut db, EVENTS, 10).await {
                    Ok(()) => return,
                    Err(error) => {
                        eprintln!("producer: {error}; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = std::process::Command::new("sh")
        .args(["-c", &restart])
        .status()
        .unwrap();
    assert!(status.success(), "restart command failed: {status}");
    producer.await.unwrap();
    assert!(
        app.wait_until_delivered(Duration::from_secs(120))
            .await
            .unwrap(),
        "deliveries still pending two minutes after the restart"
    );
    assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    exactly_once(&db, EVENTS, 2).await;
    app.shutdown().await.unwrap();
}
