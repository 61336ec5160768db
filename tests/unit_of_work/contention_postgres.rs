//! Contention only PostgreSQL has: deadlocks between two writers, serialization failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use keel::{Error, Isolation, RetryPolicy, RowLock, UnitOfWorkOptions, sqlx};
use keel_testing::TestDatabase;
use tokio::sync::Barrier;

use super::B;
use super::contention::quick_retries;
use super::support::{accounts_with, scalar};

/// Two units of work lock rows 1 and 2 in opposite orders. PostgreSQL detects the
/// deadlock and aborts one (40P01); Keel re-runs it and both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlock_loser_is_retried_and_both_commit() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
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
            let options = UnitOfWorkOptions::named("transfer").retry(quick_retries(5));
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
    // Usually the loser commits on its second attempt and the winner on its first; on a
    // loaded machine the loser's retry may lock its first row again before the winner's
    // backend has run to take it, and the two meet the same deadlock once more (either
    // may lose it then).
    assert!(a.max(b) >= 2, "one of them lost a deadlock ({a}, {b})");
    assert!(
        a.max(b) <= 5,
        "both commit within their attempts ({a}, {b})"
    );
    assert_eq!(retried.load(Ordering::SeqCst), a + b - 2);
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
async fn write_skew_is_retried_to_a_correct_end() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
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
            let options = UnitOfWorkOptions::named("go_off_call")
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
async fn serialization_failure_is_classified_transient() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
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
            let options = UnitOfWorkOptions::named("bump")
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

/// `SET TRANSACTION ISOLATION LEVEL` as the first statement would silently downgrade a
/// serializable unit of work: its commit is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolation_level_changed_by_hand_is_refused() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let mut db = test_db.database().clone();
    accounts_with(&db, 100).await;
    let options = UnitOfWorkOptions::named("audited").isolation(Isolation::Serializable);
    let err = db
        .unit_of_work_with(&options, async |tx| {
            sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                .execute(tx.conn())
                .await?;
            sqlx::query("UPDATE accounts SET balance = 0 WHERE id = 1")
                .execute(tx.conn())
                .await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TransactionReplaced {
                unit_of_work: "audited"
            }
        ),
        "{err}"
    );
    assert_eq!(
        scalar(&db, "SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
}

/// A unit of work with no lock timeout of its own still does not wait forever for a row:
/// the database's default lock timeout bounds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_lock_waits_are_bounded_by_default() {
    let Some(test_db) = TestDatabase::<B>::with(|options| {
        options.lock_timeout(std::time::Duration::from_millis(200))
    })
    .await
    else {
        return;
    };
    let db = test_db.database().clone();
    accounts_with(&db, 100).await;
    let (release, released) = tokio::sync::oneshot::channel();
    let (held, is_held) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(super::contention::hold_row(db.clone(), released, held));
    is_held.await.unwrap();
    let mut waiter = db.clone();
    let started = std::time::Instant::now();
    let err = waiter
        .unit_of_work_with(
            &UnitOfWorkOptions::named("waiter").retry(RetryPolicy::never()),
            async |tx| tx.lock(RowLock::for_update("accounts", 1)).await,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.last_attempt(), Error::LockTimeout { .. }),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    release.send(()).unwrap();
    holder.await.unwrap();
}

/// A session-level `SET` or a `LISTEN` made by a unit of work's steps does not leak to the
/// next unit of work on the same pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_do_not_leak_to_the_next_unit_of_work() {
    let Some(test_db) = TestDatabase::<B>::with(|options| options.max_connections(1)).await else {
        return;
    };
    let mut db = test_db.database().clone();
    db.unit_of_work(async |tx| {
        sqlx::raw_sql("SET statement_timeout = '1234ms'; LISTEN keel_test_channel")
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
    .unwrap()
    .into_value();
    let (timeout, listening, lock_timeout) = db
        .unit_of_work(async |tx| {
            let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
                .fetch_one(tx.conn())
                .await?;
            let listening: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_listening_channels()")
                .fetch_one(tx.conn())
                .await?;
            let lock_timeout: String = sqlx::query_scalar("SHOW lock_timeout")
                .fetch_one(tx.conn())
                .await?;
            Ok((timeout, listening, lock_timeout))
        })
        .await
        .unwrap()
        .into_value();
    assert_eq!((timeout.as_str(), listening), ("0", 0));
    assert_eq!(
        lock_timeout, "5s",
        "the connection's own lock timeout is kept"
    );
}
