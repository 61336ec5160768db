//! The incident's pattern, a unit of work waiting for another one that needs its
//! connection (here: opened from a task spawned inside it), never hangs: it fails within
//! the pool's or the lock's timeout with an error naming the unit of work that holds it.

use std::time::{Duration, Instant};

use keel::{Error, RetryPolicy, UnitOfWorkOptions};
use keel_testing::TestDatabase;

use super::{B, POSTGRES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_of_work_waiting_for_a_nested_one_fails_naming_the_holder() {
    let Some(test_db) = TestDatabase::<B>::with(|options| {
        options
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(300))
            .lock_timeout(Duration::from_millis(300))
    })
    .await
    else {
        return;
    };
    let mut db = test_db.database().clone();
    let nested = db.clone();
    let nested = &nested;
    let started = Instant::now();
    let inner = db
        .unit_of_work_with(&UnitOfWorkOptions::named("outer"), async |_tx| {
            let mut nested = nested.clone();
            // A spawned task does not inherit the unit of work's marker: it asks the pool.
            let task = tokio::spawn(async move {
                nested
                    .unit_of_work_with(
                        &UnitOfWorkOptions::named("inner").retry(RetryPolicy::never()),
                        async |_tx| Ok(()),
                    )
                    .await
                    .map(keel::Committed::into_value)
            });
            Ok(task.await.expect("the task ran"))
        })
        .await
        .unwrap()
        .into_value();
    let err = inner.unwrap_err();
    let text = err.to_string();
    if POSTGRES {
        assert!(
            matches!(&err, Error::PoolExhausted { waiting: "inner", holders, .. } if holders == &["outer"]),
            "{text}"
        );
        assert!(text.contains("deadlocked"), "{text}");
    } else {
        // SQLite's one writer: the nested unit of work waits for the write lock.
        assert!(
            matches!(err.last_attempt(), Error::LockTimeout { .. }),
            "{text}"
        );
    }
    assert!(text.contains("`outer`"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
