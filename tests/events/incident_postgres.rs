//! The incident Keel was built from, reproduced on PostgreSQL: transactions that each hold
//! a pooled connection and then ask the pool for another one. With plain sqlx the program
//! hangs until the acquire timeout; with Keel the same flow fails at once with an error
//! naming the rule (and, written naturally, does not compile: see `static_rules`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::{DatabaseOptions, Error, sqlx};
use keel_testing::TestDatabase;
use tokio::sync::Barrier;

use super::{App, B, Registry};

const POOL: u32 = 4;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sqlx_deadlocks_its_own_pool() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(test_db.database().url())
        .await
        .unwrap();
    let all_inside = Arc::new(Barrier::new(POOL as usize));
    let all_answered = Arc::new(Barrier::new(POOL as usize));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..POOL {
        let (pool, all_inside, all_answered) =
            (pool.clone(), all_inside.clone(), all_answered.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
            all_inside.wait().await;
            // The "event handler" queries the pool instead of the transaction.
            let second = sqlx::query("SELECT 1").execute(&pool).await;
            // Every transaction stays open until every task has its answer, as under
            // sustained load: no connection comes back to rescue a late waiter.
            all_answered.wait().await;
            tx.rollback().await.unwrap();
            second
        }));
    }
    for task in tasks {
        let second = task.await.unwrap();
        assert!(
            matches!(second, Err(sqlx::Error::PoolTimedOut)),
            "every task waits for a connection that never comes: {second:?}"
        );
    }
    assert!(started.elapsed() >= ACQUIRE_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_flow_in_keel_fails_at_once() {
    let Some(test_db) = TestDatabase::<B>::with(|options: DatabaseOptions| {
        options
            .max_connections(POOL)
            .acquire_timeout(ACQUIRE_TIMEOUT)
    })
    .await
    else {
        return;
    };
    let app = App::new(test_db.database().clone(), Registry::new());
    let all_inside = Arc::new(Barrier::new(POOL as usize));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..POOL {
        let (app, all_inside) = (app.clone(), all_inside.clone());
        tasks.push(tokio::spawn(async move {
            // The pool smuggled in: a clone of the database captured by the steps.
            let smuggled = app.database().clone();
            let (smuggled, all_inside) = (&smuggled, &all_inside);
            app.session()
                .unit_of_work(async |tx| {
                    sqlx::query("SELECT 1").execute(tx.conn()).await?;
                    if tx.attempt() == 1 {
                        all_inside.wait().await;
                    }
                    let mut second = smuggled.acquire().await?;
                    sqlx::query("SELECT 1").execute(&mut *second).await?;
                    Ok(())
                })
                .await
        }));
    }
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::InsideUnitOfWork { .. }), "{err}");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < ACQUIRE_TIMEOUT / 4,
        "the backstop must answer at once, not after the acquire timeout: {elapsed:?}"
    );
    // Every connection went back to the pool.
    let mut session = app.session();
    session
        .unit_of_work(async |tx| {
            sqlx::query("SELECT 1").execute(tx.conn()).await?;
            Ok(())
        })
        .await
        .unwrap();
}
