//! Commit on `Ok`; no trace on `Err`, panic or cancellation; the pool survives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel::{Error, RetryPolicy, UnitOfWorkOptions, sqlx};

use super::support::scalar;
use super::{B, Database};

async fn notes(db: &Database) {
    db.execute_script("CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)")
        .await
        .unwrap();
}

async fn ok_commits_and_returns_the_value(mut db: Database) {
    notes(&db).await;
    let value = db
        .unit_of_work(async |tx| {
            sqlx::query("INSERT INTO notes (id, body) VALUES (1, 'kept')")
                .execute(tx.conn())
                .await?;
            Ok(41 + 1)
        })
        .await
        .map(keel::Committed::into_value)
        .unwrap();
    assert_eq!(value, 42);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM notes").await, 1);
}

#[derive(Debug, thiserror::Error)]
#[error("refused on purpose")]
struct Refused;
impl keel::Rejection for Refused {}

async fn err_rolls_back_and_is_not_retried(mut db: Database) {
    notes(&db).await;
    let runs = AtomicU32::new(0);
    let runs = &runs;
    let err = db
        .unit_of_work(async |tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            sqlx::query("INSERT INTO notes (id, body) VALUES (1, 'lost')")
                .execute(tx.conn())
                .await?;
            Err::<(), _>(Refused.into())
        })
        .await
        .map(keel::Committed::into_value)
        .unwrap_err();
    assert!(err.rejection::<Refused>().is_some(), "{err}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a rejection must not be retried"
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM notes").await, 0);

    // A permanent database error (here: a constraint violation) is not retried either.
    let runs = AtomicU32::new(0);
    let runs = &runs;
    let err = db
        .unit_of_work(async |tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            sqlx::query("INSERT INTO notes (id, body) VALUES (7, 'a'), (7, 'b')")
                .execute(tx.conn())
                .await?;
            Ok(())
        })
        .await
        .map(keel::Committed::into_value)
        .unwrap_err();
    assert!(matches!(err, Error::Database(_)), "{err}");
    // In the server's words, without the line of PostgreSQL's source that raised it.
    let text = err.to_string();
    assert!(text.contains("UNIQUE") || text.contains("unique"), "{text}");
    assert!(!text.contains(" at line "), "{text}");
    assert!(!err.is_transient());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM notes").await, 0);
}

async fn panic_rolls_back_and_the_pool_stays_usable(mut db: Database) {
    notes(&db).await;
    // More panics than the pool has connections: a leaked connection would show.
    for i in 0..15_i64 {
        let mut db = db.clone();
        let joined = tokio::spawn(async move {
            db.unit_of_work(async |tx| {
                sqlx::query("INSERT INTO notes (id, body) VALUES ($1, 'lost')")
                    .bind(i)
                    .execute(tx.conn())
                    .await?;
                if i >= 0 {
                    panic!("step {i} panics");
                }
                Ok(())
            })
            .await
            .map(keel::Committed::into_value)
        })
        .await;
        assert!(joined.unwrap_err().is_panic());
    }
    let kept = db
        .unit_of_work(async |tx| {
            sqlx::query("INSERT INTO notes (id, body) VALUES (100, 'kept')")
                .execute(tx.conn())
                .await?;
            Ok(())
        })
        .await
        .map(keel::Committed::into_value);
    assert!(kept.is_ok(), "{kept:?}");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM notes").await, 1);
}

async fn cancellation_rolls_back_without_leaking_the_connection(mut db: Database) {
    notes(&db).await;
    for i in 0..15_i64 {
        let slow = db.unit_of_work(async |tx| {
            sqlx::query("INSERT INTO notes (id, body) VALUES ($1, 'lost')")
                .bind(i)
                .execute(tx.conn())
                .await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        });
        let timed_out = tokio::time::timeout(Duration::from_millis(50), slow).await;
        assert!(
            timed_out.is_err(),
            "the unit of work should have been cancelled"
        );
    }
    db.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO notes (id, body) VALUES (100, 'kept')")
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
    .map(keel::Committed::into_value)
    .unwrap();
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM notes").await, 1);
}

async fn inside_a_unit_of_work_the_pool_is_out_of_reach(mut db: Database) {
    notes(&db).await;
    let escaped = db.clone();
    let escaped = &escaped;
    let started = std::time::Instant::now();
    let (acquire, nested) = db
        .unit_of_work(async |_tx| {
            let acquire = escaped.acquire().await.map(|_| ());
            let mut smuggled = escaped.clone();
            let nested = smuggled
                .unit_of_work(async |_inner| Ok(()))
                .await
                .map(keel::Committed::into_value);
            Ok((acquire, nested))
        })
        .await
        .map(keel::Committed::into_value)
        .unwrap();
    let acquire = acquire.unwrap_err();
    assert!(
        matches!(acquire, Error::InsideUnitOfWork { .. }),
        "{acquire}"
    );
    assert!(acquire.to_string().contains("&mut Tx"), "{acquire}");
    assert!(matches!(
        nested.unwrap_err(),
        Error::InsideUnitOfWork { .. }
    ));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the refusal must be immediate"
    );
}

async fn the_same_closure_runs_again_on_retry(mut db: Database) {
    notes(&db).await;
    let runs = Arc::new(AtomicU32::new(0));
    let counter = &runs;
    let policy = UnitOfWorkOptions::named("flaky").retry(
        RetryPolicy::default()
            .max_attempts(4)
            .base_delay(Duration::from_millis(1)),
    );
    let attempt_seen = db
        .unit_of_work_with(&policy, async |tx| {
            counter.fetch_add(1, Ordering::SeqCst);
            sqlx::query("INSERT INTO notes (id, body) VALUES (1, 'once')")
                .execute(tx.conn())
                .await?;
            if tx.attempt() < 3 {
                // Simulates the database asking to try again.
                return Err(Error::LockTimeout {
                    detail: "simulated".into(),
                });
            }
            Ok(tx.attempt())
        })
        .await
        .map(keel::Committed::into_value)
        .unwrap();
    assert_eq!(attempt_seen, 3);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    // Failed attempts left nothing: the row was inserted once, by the attempt that committed.
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM notes").await, 1);
}

keel_testing::backend_tests!(
    ok_commits_and_returns_the_value,
    err_rolls_back_and_is_not_retried,
    panic_rolls_back_and_the_pool_stays_usable,
    cancellation_rolls_back_without_leaking_the_connection,
    inside_a_unit_of_work_the_pool_is_out_of_reach,
    the_same_closure_runs_again_on_retry,
);
