//! Four relays, each on a pool of its own like four processes, share 20,000 events
//! written by a producer that does not know the handlers. No (event, handler) runs twice
//! at the same time; every effect exists exactly once.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel::Error;
use keel_testing::TestDatabase;

use super::support::*;
use super::{B, Handler, HandlerContext};

const EVENTS: i64 = 20_000;

static RUNNING: Mutex<Option<HashSet<i64>>> = Mutex::new(None);
static OVERLAPS: AtomicUsize = AtomicUsize::new(0);
static RUNS: AtomicUsize = AtomicUsize::new(0);

async fn tracked(event: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    let fresh = RUNNING
        .lock()
        .unwrap()
        .get_or_insert_with(HashSet::new)
        .insert(event.seq);
    if !fresh {
        OVERLAPS.fetch_add(1, Ordering::SeqCst);
    }
    let result = write_effect(event.seq, ctx).await;
    if fresh {
        RUNNING.lock().unwrap().as_mut().unwrap().remove(&event.seq);
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_relays_share_the_work_without_overlap() {
    let _turn = crate::turns::Turn::take();
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    schema(&db).await;
    // The producer has no dispatcher: its events are written unrouted, for the relays.
    let mut producer = db.clone();
    produce(&mut producer, EVENTS, 1_000).await.unwrap();
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM keel_events WHERE NOT routed").await,
        EVENTS
    );

    let mut apps = Vec::new();
    for _ in 0..4 {
        let pool = db.connect_again().await.unwrap();
        let handlers = registry(vec![
            Handler::new::<Ticked, _>("tracked", tracked).retry(patient()),
        ]);
        apps.push(app(&pool, handlers));
    }
    assert!(
        apps[0]
            .wait_until_delivered(Duration::from_secs(240))
            .await
            .unwrap()
    );
    for app in apps {
        app.shutdown().await.unwrap();
    }
    assert_eq!(
        OVERLAPS.load(Ordering::SeqCst),
        0,
        "a delivery ran twice at once"
    );
    assert_eq!(
        RUNS.load(Ordering::SeqCst) as i64,
        EVENTS,
        "a delivery ran twice"
    );
    exactly_once(&db, EVENTS, 1).await;
    let relays_that_worked = scalar(
        &db,
        "SELECT COUNT(DISTINCT leased_by) FROM keel_deliveries WHERE leased_by IS NOT NULL",
    )
    .await;
    assert_eq!(relays_that_worked, 0, "done deliveries keep no lease");
}
