//! A connection lost during a unit of work (server restart, failover, a proxy's idle cut)
//! before `COMMIT` was sent: the server rolled the transaction back, so Keel runs the steps
//! again on a fresh connection, and they commit once.

use std::sync::atomic::{AtomicU32, Ordering};

use keel::sqlx::{self, Connection};
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
