//! What Keel sends leaves the server's statement statistics readable: the text of each of
//! its statements is the same from one unit of work to the next, so `pg_stat_statements`
//! (loaded on most production servers) counts them under one entry each instead of filling
//! up with one entry per unit of work, evicting the entries an operator looks for.

use keel::sqlx;
use keel_testing::TestDatabase;

use super::B;

/// The entries `pg_stat_statements` holds for this database, or `None` when the server
/// does not load it.
async fn entries(db: &super::Database) -> Option<i64> {
    let mut conn = db.acquire().await.unwrap();
    let counted = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut *conn)
    .await;
    match counted {
        Ok(n) => Some(n),
        Err(error) if error.to_string().contains("shared_preload_libraries") => None,
        Err(error) => panic!("reading pg_stat_statements: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_of_work_add_no_statement_entries_of_their_own() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let mut db = test_db.database().clone();
    db.execute_script(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
         CREATE TABLE counters (id INT PRIMARY KEY, n INT NOT NULL);
         INSERT INTO counters VALUES (1, 0);",
    )
    .await
    .unwrap();
    let mut run = async |count: usize| {
        for _ in 0..count {
            let _ = db
                .unit_of_work(async |tx| {
                    sqlx::query("UPDATE counters SET n = n + 1 WHERE id = 1")
                        .execute(tx.conn())
                        .await?;
                    Ok(())
                })
                .await
                .unwrap();
        }
    };
    run(5).await;
    // The count's own entry is recorded when it first runs (or when first planned).
    let _ = entries(test_db.database()).await;
    let Some(before) = entries(test_db.database()).await else {
        assert!(
            std::env::var_os("KEEL_REQUIRE_POSTGRES").is_none(),
            "the server does not load pg_stat_statements; scripts/test.sh starts it with \
             `-c shared_preload_libraries=pg_stat_statements`"
        );
        return;
    };
    run(20).await;
    let after = entries(test_db.database()).await.unwrap();
    assert_eq!(
        after,
        before,
        "20 more units of work added {} entries to pg_stat_statements",
        after - before
    );
}
