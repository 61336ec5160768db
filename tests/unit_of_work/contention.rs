//! Deadlocks, serialization failures, lock timeouts, NOWAIT / SKIP LOCKED, named locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel::{Backend, Database, Error, Isolation, Locked, RetryPolicy, RowLock, UnitOfWork, sqlx};
use keel_testing::TestDatabase;
use tokio::sync::{Barrier, oneshot};

use crate::support::{accounts_with, scalar};

fn quick_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(attempts)
        .base_delay(Duration::from_millis(5))
}

/// Two units of work lock rows 1 and 2 in opposite orders. PostgreSQL detects the
/// deadlock and aborts one (40P01); Keel re-runs it and both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlock_loser_is_retried_and_both_commit_postgres() {
    let Some(test_db) = TestDatabase::postgres().await else {
        return;
    };
    let db = test_db.database().clone();
    accounts_with(&db, 100).await;
    let barrier = Arc::new(Barrier::new(2));
    let retried = Arc::new(AtomicU32::new(0));

    let transfer = |first: i64, second: i64| {
        let (db, barrier, retried) = (db.clone(), barrier.clone(), retried.clone());
        async move {
            // Each party on a pool of its own, like separate instances.
            let mut db = db.connect_again().await.unwrap();
            let options = UnitOfWork::named("transfer").retry(quick_retries(5));
            let (barrier, retried) = (&barrier, &retried);
            db.unit_of_work_with(&options, async |tx| {
                if tx.attempt() > 1 {
                    retried.fetch_add(1, Ordering::SeqCst);
                }
                let _ = tx.lock(RowLock::for_update("accounts", first)).await?;
                if tx.attempt() == 1 {
                    barrier.wait().await;
                }
                let _ = tx.lock(RowLock::for_update("accounts", second)).await?;
                sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = $1")
                    .bind(first)
                    .execute(tx.conn())
                    .await?;
                sqlx::query("UPDATE accounts SET balance = balance + 10 WHERE id = $1")
                    .bind(second)
                    .execute(tx.conn())
                    .await?;
                Ok(tx.attempt())
            })
            .await
            .map(keel::Committed::into_value)
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(transfer(1, 2)), tokio::spawn(transfer(2, 1)));
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(
        (a.max(b), a.min(b)),
        (2, 1),
        "one transfer commits first time, the deadlock loser on its second attempt"
    );
    assert_eq!(retried.load(Ordering::SeqCst), 1);
    assert_eq!(
        scalar(&db, "SELECT CAST(SUM(balance) AS BIGINT) FROM accounts").await,
        200
    );
    assert_eq!(
        scalar(&db, "SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
}

/// Write skew under SERIALIZABLE: two doctors on call, each going off call if another
/// remains. Both read "2 on call", both write; PostgreSQL aborts one (40001), Keel re-runs
/// it, the re-run sees "1 on call" and refuses. At least one doctor stays on call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_skew_is_retried_to_a_correct_end_postgres() {
    let Some(test_db) = TestDatabase::postgres().await else {
        return;
    };
    let db = test_db.database().clone();
    db.execute_script(
        "CREATE TABLE doctors (id BIGINT PRIMARY KEY, on_call BOOLEAN NOT NULL);
         INSERT INTO doctors VALUES (1, TRUE), (2, TRUE);",
    )
    .await
    .unwrap();

    #[derive(Debug, thiserror::Error)]
    #[error("the last doctor on call cannot leave")]
    struct LastOnCall;
    impl keel::Rejection for LastOnCall {}

    let barrier = Arc::new(Barrier::new(2));
    let go_off_call = |doctor: i64| {
        let (db, barrier) = (db.clone(), barrier.clone());
        async move {
            // Each party on a pool of its own, like separate instances.
            let mut db = db.connect_again().await.unwrap();
            let options = UnitOfWork::named("go_off_call")
                .isolation(Isolation::Serializable)
                .retry(quick_retries(5));
            let barrier = &barrier;
            db.unit_of_work_with(&options, async |tx| {
                let (on_call,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM doctors WHERE on_call")
                        .fetch_one(tx.conn())
                        .await?;
                if tx.attempt() == 1 {
                    barrier.wait().await;
                }
                if on_call < 2 {
                    return Err(LastOnCall.into());
                }
                sqlx::query("UPDATE doctors SET on_call = FALSE WHERE id = $1")
                    .bind(doctor)
                    .execute(tx.conn())
                    .await?;
                Ok(tx.attempt())
            })
            .await
            .map(keel::Committed::into_value)
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(go_off_call(1)), tokio::spawn(go_off_call(2)));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (won, lost) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("expected one success and one refusal, got {other:?}"),
    };
    assert_eq!(won, 1);
    assert!(lost.rejection::<LastOnCall>().is_some(), "{lost}");
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM doctors WHERE on_call").await,
        1
    );
}

/// The classification of a raw serialization failure, seen without retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialization_failure_is_classified_transient_postgres() {
    let Some(test_db) = TestDatabase::postgres().await else {
        return;
    };
    let db = test_db.database().clone();
    accounts_with(&db, 100).await;
    let barrier = Arc::new(Barrier::new(2));
    let bump = || {
        let (db, barrier) = (db.clone(), barrier.clone());
        async move {
            // Each party on a pool of its own, like separate instances.
            let mut db = db.connect_again().await.unwrap();
            let options = UnitOfWork::named("bump")
                .isolation(Isolation::RepeatableRead)
                .retry(RetryPolicy::never());
            let barrier = &barrier;
            db.unit_of_work_with(&options, async |tx| {
                let _: (i64,) = sqlx::query_as("SELECT balance FROM accounts WHERE id = 1")
                    .fetch_one(tx.conn())
                    .await?;
                barrier.wait().await;
                sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
                    .execute(tx.conn())
                    .await?;
                Ok(())
            })
            .await
            .map(keel::Committed::into_value)
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(bump()), tokio::spawn(bump()));
    let failures: Vec<Error> = [a.unwrap(), b.unwrap()]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let last = failures[0].last_attempt();
    assert!(matches!(last, Error::SerializationFailure(_)), "{last}");
    assert!(last.is_transient());
}

/// 20 units of work lock a name that has no row yet, all at once: none sees a
/// duplicate-key error, and they never overlap.
async fn named_lock_race_on_a_new_name(db: Database) {
    let inside = Arc::new(AtomicU32::new(0));
    let max_inside = Arc::new(AtomicU32::new(0));
    let start = Arc::new(Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (mut db, inside, max_inside, start) = (
            db.clone(),
            inside.clone(),
            max_inside.clone(),
            start.clone(),
        );
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let options = UnitOfWork::named("import").lock_timeout(Duration::from_secs(20));
            let (inside, max_inside) = (&inside, &max_inside);
            db.unit_of_work_with(&options, async |tx| {
                tx.lock_named("import:2026-11-21").await?;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok(tx.attempt())
            })
            .await
            .map(keel::Committed::into_value)
        }));
    }
    for task in tasks {
        let attempt = task.await.unwrap().unwrap();
        assert_eq!(attempt, 1, "no unit of work should have needed a retry");
    }
    assert_eq!(max_inside.load(Ordering::SeqCst), 1, "holders overlapped");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_locks WHERE name = 'import:2026-11-21'"
        )
        .await,
        1
    );
}

/// Holds row 1 of `accounts` (on SQLite: the write lock) until `release` fires.
/// The holder runs on a pool of its own, as another instance of the service would.
async fn hold_row(db: Database, release: oneshot::Receiver<()>, held: oneshot::Sender<()>) {
    let mut db = db.connect_again().await.unwrap();
    let cell = std::sync::Mutex::new((Some(release), Some(held)));
    let cell = &cell;
    db.unit_of_work(async |tx| {
        let _ = tx.lock(RowLock::for_update("accounts", 1)).await?;
        let (release, held) = {
            let mut pair = cell.lock().unwrap();
            (pair.0.take(), pair.1.take())
        };
        if let Some(held) = held {
            let _ = held.send(());
        }
        if let Some(release) = release {
            let _ = release.await;
        }
        Ok(())
    })
    .await
    .map(keel::Committed::into_value)
    .unwrap();
}

async fn lock_timeout_is_typed_retried_and_gives_up(mut db: Database) {
    accounts_with(&db, 100).await;
    let (release, released) = oneshot::channel();
    let (held, is_held) = oneshot::channel();
    let holder = tokio::spawn(hold_row(db.clone(), released, held));
    is_held.await.unwrap();

    let runs = AtomicU32::new(0);
    let runs = &runs;
    let options = UnitOfWork::named("impatient")
        .lock_timeout(Duration::from_millis(100))
        .retry(quick_retries(3));
    let started = Instant::now();
    let err = db
        .unit_of_work_with(&options, async |tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = tx.lock(RowLock::for_update("accounts", 1)).await?;
            Ok(())
        })
        .await
        .map(keel::Committed::into_value)
        .unwrap_err();
    let elapsed = started.elapsed();
    match &err {
        Error::RetriesExhausted {
            unit_of_work,
            attempts,
            last,
        } => {
            assert_eq!((*unit_of_work, *attempts), ("impatient", 3));
            assert!(matches!(**last, Error::LockTimeout { .. }), "{last}");
        }
        other => panic!("expected RetriesExhausted, got {other}"),
    }
    assert!(err.to_string().contains("3 attempts"), "{err}");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    if db.backend() == Backend::Postgres {
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    release.send(()).unwrap();
    holder.await.unwrap();
    // With the lock free, the same unit of work succeeds.
    db.unit_of_work_with(&options, async |tx| {
        let _ = tx.lock(RowLock::for_update("accounts", 1)).await?;
        Ok(())
    })
    .await
    .map(keel::Committed::into_value)
    .unwrap();
}

async fn lock_timeout_then_success_when_the_holder_finishes(mut db: Database) {
    accounts_with(&db, 100).await;
    let (release, released) = oneshot::channel();
    let (held, is_held) = oneshot::channel();
    let holder = tokio::spawn(hold_row(db.clone(), released, held));
    is_held.await.unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _ = release.send(());
    });
    let options = UnitOfWork::named("patient")
        .lock_timeout(Duration::from_millis(100))
        .retry(
            RetryPolicy::default()
                .max_attempts(10)
                .base_delay(Duration::from_millis(50))
                .multiplier(1.0)
                .jitter(0.0),
        );
    let attempts = db
        .unit_of_work_with(&options, async |tx| {
            let _ = tx.lock(RowLock::for_update("accounts", 1)).await?;
            Ok(tx.attempt())
        })
        .await
        .map(keel::Committed::into_value)
        .unwrap();
    assert!(attempts >= 2, "the first attempt must have timed out");
    holder.await.unwrap();
}

async fn nowait_and_skip_locked(mut db: Database) {
    accounts_with(&db, 100).await;
    // Missing rows are reported, not invented.
    let outcome = db
        .unit_of_work(async |tx| tx.lock(RowLock::for_share("accounts", 404)).await)
        .await
        .map(keel::Committed::into_value)
        .unwrap();
    assert_eq!(outcome, Locked::Missing);
    let err = db
        .unit_of_work(async |tx| tx.lock(RowLock::for_update("accounts; --", 1)).await)
        .await
        .map(keel::Committed::into_value)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidIdentifier(_)), "{err}");

    if db.backend() == Backend::Sqlite {
        // One writer at a time: whoever runs holds every row.
        let outcome = db
            .unit_of_work(async |tx| tx.lock(RowLock::for_update("accounts", 1).nowait()).await)
            .await
            .map(keel::Committed::into_value)
            .unwrap();
        assert_eq!(outcome, Locked::Acquired);
        return;
    }

    let (release, released) = oneshot::channel();
    let (held, is_held) = oneshot::channel();
    let holder = tokio::spawn(hold_row(db.clone(), released, held));
    is_held.await.unwrap();

    let started = Instant::now();
    let err = db
        .unit_of_work_with(
            &UnitOfWork::named("nowait").retry(RetryPolicy::never()),
            async |tx| tx.lock(RowLock::for_update("accounts", 1).nowait()).await,
        )
        .await
        .map(keel::Committed::into_value)
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(err.last_attempt(), Error::RowLocked { table: "accounts", key } if key == "1"),
        "{err}"
    );
    let (one, two) = db
        .unit_of_work(async |tx| {
            let one = tx
                .lock(RowLock::for_update("accounts", 1).skip_locked())
                .await?;
            let two = tx
                .lock(RowLock::for_update("accounts", 2).skip_locked())
                .await?;
            Ok((one, two))
        })
        .await
        .map(keel::Committed::into_value)
        .unwrap();
    assert_eq!((one, two), (Locked::Skipped, Locked::Acquired));

    release.send(()).unwrap();
    holder.await.unwrap();
}

keel_testing::backend_tests!(
    named_lock_race_on_a_new_name,
    lock_timeout_is_typed_retried_and_gives_up,
    lock_timeout_then_success_when_the_holder_finishes,
    nowait_and_skip_locked,
);

/// Two handles on one SQLite file behave like two processes: the second one's writer
/// meets `SQLITE_BUSY` from SQLite itself, which is classified as a lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_from_another_process_is_a_lock_timeout_sqlite() {
    let test_db = TestDatabase::sqlite().await;
    let db = test_db.database().clone();
    accounts_with(&db, 100).await;
    let mut other_process = db.connect_again().await.unwrap();

    let (release, released) = oneshot::channel();
    let (held, is_held) = oneshot::channel();
    let holder = tokio::spawn(hold_row(db.clone(), released, held));
    is_held.await.unwrap();

    let options = UnitOfWork::named("other_process")
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
    other_process.close().await;
    assert_eq!(
        scalar(&db, "SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
}
