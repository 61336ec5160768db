//! Concurrent duplicates of one delivery, which only PostgreSQL runs at the same moment
//! (SQLite has one writer at a time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel::{Error, Incoming, sqlx};
use keel_testing::TestDatabase;
use tokio::sync::Barrier;

use super::inbox::{pending_delivery, process};
use super::support::*;
use super::{B, Dispatcher, Handler};

/// Two deliveries of one event running at the same moment (PostgreSQL: the second waits
/// on the first's mark, then finds it): the effects happen once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_commit_effects_once() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    schema(&db).await;
    let event_id = pending_delivery(&db, "effect").await;
    let runs = Arc::new(AtomicU32::new(0));
    let both_started = Arc::new(Barrier::new(2));
    let first = {
        let (db, event_id, runs, both_started) = (
            db.connect_again().await.unwrap(),
            event_id,
            runs.clone(),
            both_started.clone(),
        );
        tokio::spawn(async move { process(db, event_id, &runs, Some(&both_started)).await })
    };
    // The second starts once the first holds the mark (inside its steps).
    let second = {
        let (db, event_id, runs) = (db.connect_again().await.unwrap(), event_id, runs.clone());
        let both_started = both_started.clone();
        tokio::spawn(async move {
            both_started.wait().await;
            process(db, event_id, &runs, None).await
        })
    };
    first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap_err();
    assert!(matches!(second, Error::AlreadyProcessed { .. }), "{second}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects").await, 1);
}

/// A message accepted again (a broker's redelivery) while its first copy's delivery
/// completes: the second accept began before the first committed, then waited (here on a
/// third accept of another message) while the handler ran and committed. The delivery
/// must not be created again, or the handler would run a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_accepted_again_while_its_delivery_completes_is_not_delivered_again() {
    accepted_again_while_its_delivery_completes(None).await;
}

/// The same race when the copy received again cannot be read (a dead arrival): neither its
/// dead delivery nor the error row written for it stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_copy_accepted_while_its_delivery_completes_leaves_nothing() {
    accepted_again_while_its_delivery_completes(Some("cannot be read")).await;
}

async fn accepted_again_while_its_delivery_completes(dead: Option<&str>) {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    schema(&db).await;
    let dispatcher = Dispatcher::new(
        db.clone(),
        registry(vec![Handler::new::<Ticked, _>("effect_a", effect_a)]),
    );
    let message = |seq| Incoming {
        envelope: keel::Envelope::wrap(&Ticked { seq }).unwrap(),
        dead: None,
        ordered: false,
    };
    let (other, mut again) = (message(1), message(2));
    again.dead = dead.map(str::to_owned);
    let delivery = "INSERT INTO keel_deliveries (event_id, handler) VALUES ($1, 'effect_a')";
    // Two accepts not yet committed: one of another message, the first of this one.
    let mut third = db.connect_again().await.unwrap().acquire().await.unwrap();
    let mut first = db.connect_again().await.unwrap().acquire().await.unwrap();
    for (conn, incoming) in [(&mut third, &other), (&mut first, &again)] {
        sqlx::raw_sql("BEGIN").execute(&mut **conn).await.unwrap();
        sqlx::query(delivery)
            .bind(incoming.envelope.id.as_uuid())
            .execute(&mut **conn)
            .await
            .unwrap();
    }
    // The redelivery is accepted, and waits on the other message's accept (watched from a
    // pool of its own: the accept may hold the only connection of `db`'s).
    let watcher = db.connect_again().await.unwrap();
    let second = tokio::spawn(async move { dispatcher.accept("effect_a", &[other, again]).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while scalar(
        &watcher,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .await
        == 0
    {
        if second.is_finished() || Instant::now() > deadline {
            panic!("the second accept never waited: {:?}", second.await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile the first accept commits and the handler's unit of work marks it done.
    sqlx::raw_sql("COMMIT").execute(&mut *first).await.unwrap();
    sqlx::raw_sql(
        "WITH d AS (DELETE FROM keel_deliveries WHERE handler = 'effect_a' RETURNING event_id,
                    handler, attempts)
         INSERT INTO keel_done (event_id, handler, attempts) SELECT * FROM d",
    )
    .execute(&mut *first)
    .await
    .unwrap();
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *third)
        .await
        .unwrap();
    assert_eq!(
        second.await.unwrap().unwrap(),
        1,
        "only the other message is new"
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM keel_deliveries d JOIN keel_done f USING (event_id, handler)"
        )
        .await,
        0,
        "a delivery already done was created again: its handler would run twice"
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM keel_delivery_errors").await,
        0,
        "an error row was left for a delivery already done"
    );
}
