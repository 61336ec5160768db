//! A commit wakes other processes' relays with a notification only when one listens: the
//! relays on its own pool are woken in memory, and with no relay anywhere a notification
//! would cost a round trip and a server transaction for nothing.

use std::str::FromStr;
use std::time::Duration;

use keel::sqlx::postgres::{PgConnectOptions, PgListener};
use keel::sqlx::{self, ConnectOptions};
use keel_testing::TestDatabase;

use super::support::*;
use super::{B, Handler};

/// Past the time a pool trusts its last look at who listens.
const RECHECK: Duration = Duration::from_millis(700);

async fn notified(observer: &mut PgListener, within: Duration) -> bool {
    tokio::time::timeout(within, observer.recv()).await.is_ok()
}

/// Listens to the relays' channel, as every relay does.
async fn observer(db: &super::Database) -> PgListener {
    let mut observer = PgListener::connect(db.url()).await.unwrap();
    observer.listen("keel_outbox").await.unwrap();
    observer
}

/// Another process's relay as the server sees it: a connection named like its listener.
async fn other_process_relay(db: &super::Database) -> sqlx::PgConnection {
    PgConnectOptions::from_str(db.url())
        .unwrap()
        .application_name("keel-relay other-service")
        .connect()
        .await
        .unwrap()
}

async fn relays_listening(db: &super::Database) -> i64 {
    scalar(
        db,
        "SELECT COUNT(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'keel-relay%'",
    )
    .await
}

/// The relays' connections as the server lists them, for an assertion's message.
async fn relay_connections(db: &super::Database) -> String {
    let mut conn = db.acquire().await.unwrap();
    sqlx::query_scalar(
        "SELECT coalesce(string_agg(format('[pid %s, %s, %s since %s: %s]', pid,
                    application_name, state, backend_start, query), ' '
                    ORDER BY backend_start), 'none')
           FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'keel-relay%'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_notify_only_when_another_process_relay_listens() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    schema(&db).await;
    let mut observer = observer(&db).await;
    // `produce(…, n, 1)` records event number n - 1 in a unit of work of its own.
    let mut producer = db.clone();

    // No relay anywhere: no notification.
    produce(&mut producer, 1, 1).await.unwrap();
    assert!(!notified(&mut observer, Duration::from_millis(500)).await);

    // Another process's relay.
    let other = other_process_relay(&db).await;
    tokio::time::sleep(RECHECK).await;
    produce(&mut producer, 2, 1).await.unwrap();
    assert!(
        notified(&mut observer, Duration::from_secs(5)).await,
        "a relay of another process listens: the commit must wake it"
    );
    sqlx::Connection::close(other).await.unwrap();
    // The server ends the other's backend after the client has gone: until then it still
    // counts as a relay listening, and the count below would be its, not this relay's.
    for _ in 0..200 {
        if relays_listening(&db).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        relays_listening(&db).await,
        0,
        "the other process's relay still listens 10 s after it closed: {}",
        relay_connections(&db).await
    );

    // Only this process's own relay: woken in memory, no notification.
    let app = app(
        &db,
        registry(vec![Handler::new::<Ticked, _>("effect_a", effect_a)]),
    );
    // Its listener connects in the background (seen taking over 5 s once, and over 20 s
    // once, under the full suite's load with a pool of one connection).
    for _ in 0..1200 {
        if relays_listening(&db).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        relays_listening(&db).await,
        1,
        "the relay listens after 60 s: {}",
        relay_connections(&db).await
    );
    tokio::time::sleep(RECHECK).await;
    while notified(&mut observer, Duration::from_millis(100)).await {}
    produce(&mut producer, 3, 1).await.unwrap();
    assert!(!notified(&mut observer, Duration::from_millis(500)).await);
    assert!(
        app.wait_until_delivered(Duration::from_secs(10))
            .await
            .unwrap()
    );
    app.shutdown().await.unwrap();
}

/// Messages accepted from a broker are work for every relay on the database, not only
/// the accepting process's: the accept wakes another process's relay as a commit does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_messages_wake_another_process_relay() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    schema(&db).await;
    let mut observer = observer(&db).await;
    let other = other_process_relay(&db).await;
    tokio::time::sleep(RECHECK).await;
    // This process accepts and runs no relay of its own.
    let dispatcher = keel::postgres::Dispatcher::new(
        db.clone(),
        registry(vec![Handler::new::<Ticked, _>("effect_a", effect_a)]),
    );
    let incoming = keel::Incoming {
        envelope: keel::Envelope::wrap(&Ticked { seq: 1 }).unwrap(),
        dead: None,
        ordered: false,
    };
    assert_eq!(dispatcher.accept("effect_a", &[incoming]).await.unwrap(), 1);
    assert!(
        notified(&mut observer, Duration::from_secs(5)).await,
        "a relay of another process listens: the accepted message must wake it"
    );
    sqlx::Connection::close(other).await.unwrap();
}
