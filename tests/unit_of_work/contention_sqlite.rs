//! Contention only SQLite has: another process holding the database's write lock.

use std::time::{Duration, Instant};

use keel::{Error, UnitOfWorkOptions, sqlx};
use keel_testing::TestDatabase;
use tokio::sync::oneshot;

use super::B;
use super::contention::{hold_row, quick_retries};
use super::support::{accounts_with, scalar};

/// Two handles on one SQLite file behave like two processes: the second one's writer
/// meets `SQLITE_BUSY` from SQLite itself, which is classified as a lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_from_another_process_is_a_lock_timeout() {
    let test_db = TestDatabase::<B>::new().await.unwrap();
    let db = test_db.database().clone();
    accounts_with(&db, 100).await;
    let mut other_process = db.connect_again().await.unwrap();

    let (release, released) = oneshot::channel();
    let (held, is_held) = oneshot::channel();
    let holder = tokio::spawn(hold_row(db.clone(), released, held));
    is_held.await.unwrap();

    let options = UnitOfWorkOptions::named("other_process")
        .lock_timeout(Duration::from_millis(100))
        .retry(quick_retries(2));
    let started = Instant::now();
    let err = other_process
        .unit_of_work_with(&options, async |tx| {
            sqlx::query("UPDATE accounts SET balance = 0 WHERE id = 1")
                .execute(tx.conn())
                .await?;
            Ok(())
        })
        .await
        .map(keel::Committed::into_value)
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200));
    match err.last_attempt() {
        Error::LockTimeout { detail } => assert!(detail.starts_with("SQLite"), "{detail}"),
        other => panic!("expected a lock timeout from SQLite, got {other}"),
    }
    assert!(matches!(err, Error::RetriesExhausted { attempts: 2, .. }));

    release.send(()).unwrap();
    holder.await.unwrap();
    other_process.close().await.unwrap();
    assert_eq!(
        scalar(&db, "SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
}
