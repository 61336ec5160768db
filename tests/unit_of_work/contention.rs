//! Deadlocks, serialization failures, lock timeouts, NOWAIT / SKIP LOCKED, named locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keel::{Error, Locked, RetryPolicy, RowLock, UnitOfWorkOptions};
use tokio::sync::{Barrier, oneshot};

use super::support::{accounts_with, scalar};
use super::{B, Database, POSTGRES};

pub(crate) fn quick_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(attempts)
        .base_delay(Duration::from_millis(5))
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
            let options = UnitOfWorkOptions::named("import").lock_timeout(Duration::from_secs(20));
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
pub(crate) async fn hold_row(
    db: Database,
    release: oneshot::Receiver<()>,
    held: oneshot::Sender<()>,
) {
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
    let options = UnitOfWorkOptions::named("impatient")
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
    if POSTGRES {
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
    let options = UnitOfWorkOptions::named("patient")
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

    if !POSTGRES {
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
            &UnitOfWorkOptions::named("nowait").retry(RetryPolicy::never()),
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
