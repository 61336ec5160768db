//! Connections lost to the server (a restart, a failover, an operator's terminate).
//!
//! Lost during a unit of work before `COMMIT` was sent: the server rolled the transaction
//! back, so Keel runs the steps again on a fresh connection, and they commit once. Lost
//! while idle in the pool: a unit of work's `BEGIN` finds it and begins on another
//! connection without spending an attempt; every other acquire is tested before use.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel::sqlx::{self, Connection};
use keel::{RetryPolicy, UnitOfWorkOptions};
use keel_testing::TestDatabase;

use super::B;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_before_commit_is_retried_and_commits_once() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let (mut db, url) = (test_db.database().clone(), test_db.url().to_owned());
    db.execute_script("CREATE TABLE cut (attempt INT NOT NULL)")
        .await
        .unwrap();
    let attempts = AtomicU32::new(0);
    let _ = db
        .unit_of_work(async |tx| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            sqlx::query("INSERT INTO cut (attempt) VALUES ($1)")
                .bind(attempt as i32)
                .execute(tx.conn())
                .await?;
            if attempt == 1 {
                // The server ends this connection, as a restart or a failover would.
                let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
                    .fetch_one(tx.conn())
                    .await?;
                let mut admin = sqlx::PgConnection::connect(&url).await?;
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut admin)
                    .await?;
                admin.close().await?;
            }
            sqlx::query("SELECT 1").execute(tx.conn()).await?;
            Ok(())
        })
        .await
        .expect("the unit of work is re-run on a fresh connection and commits");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let mut conn = db.acquire().await.unwrap();
    let rows: Vec<(i32,)> = sqlx::query_as("SELECT attempt FROM cut")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(rows, [(2,)], "the first attempt's insert was rolled back");
}

/// Ends every other session on the test's database, as a server restart would, and waits
/// until they are gone.
async fn end_idle_connections(url: &str) {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
}

/// A database whose pool holds an idle connection.
async fn warm(db: &keel::postgres::Database) {
    drop(db.acquire().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_idle_costs_a_unit_of_work_no_attempt() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let (mut db, url) = (test_db.database().clone(), test_db.url().to_owned());
    warm(&db).await;
    end_idle_connections(&url).await;
    let once = UnitOfWorkOptions::named("after_restart").retry(RetryPolicy::never());
    let attempts = AtomicU32::new(0);
    let _ = db
        .unit_of_work_with(&once, async |tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            sqlx::query("SELECT 1").execute(tx.conn()).await?;
            Ok(())
        })
        .await
        .expect("the unit of work begins on a live connection, with no retry allowed");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_idle_is_not_handed_out_by_acquire() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let (db, url) = (test_db.database().clone(), test_db.url().to_owned());
    warm(&db).await;
    end_idle_connections(&url).await;
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SELECT 1")
        .execute(&mut *conn)
        .await
        .expect("an acquired connection was tested before it was handed out");
}

/// The server sessions of the database at `url` named `name`.
async fn sessions_named(url: &str, name: &str) -> i64 {
    let mut admin = sqlx::PgConnection::connect(url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    n
}

/// Closing the pool while the application still holds a connection: the idle ones are
/// closed at once, `close` returns after the acquire timeout rather than hang, and the held
/// one is closed when it is returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_with_a_connection_held_closes_the_idle_ones_at_once() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let url = test_db.url().to_owned();
    let name = "keel-closing-test";
    let separator = if url.contains('?') { '&' } else { '?' };
    let db: keel::postgres::Database =
        keel::DatabaseOptions::new(format!("{url}{separator}application_name={name}"))
            .max_connections(4)
            .acquire_timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap();
    let held = db.acquire().await.unwrap();
    let (mut a, mut b) = (db.acquire().await.unwrap(), db.acquire().await.unwrap());
    // Back in the pool now, not in the task a drop would spawn.
    a.return_to_pool().await;
    b.return_to_pool().await;
    assert_eq!(sessions_named(&url, name).await, 3);

    db.close().await.unwrap();
    assert_eq!(
        sessions_named(&url, name).await,
        1,
        "the idle connections are closed, the held one stays open"
    );
    drop(held);
    for _ in 0..100 {
        if sessions_named(&url, name).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sessions_named(&url, name).await,
        0,
        "the held connection is closed once returned, and nothing else stays open"
    );
}
