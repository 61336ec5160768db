//! Small helpers shared by the tests.

use keel::sqlx;

use super::Database;

/// Reads one `i64` with a query run outside any unit of work.
pub async fn scalar(db: &Database, sql: &'static str) -> i64 {
    let mut conn = db.acquire().await.expect("a connection");
    let (value,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    value
}

/// Creates the `accounts` table used by several tests, with one account at `balance`.
pub async fn accounts_with(db: &Database, balance: i64) {
    db.execute_script(
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, \
         version BIGINT NOT NULL)",
    )
    .await
    .expect("create accounts");
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("INSERT INTO accounts (id, balance, version) VALUES (1, $1, 1), (2, $1, 1)")
        .bind(balance)
        .execute(&mut *conn)
        .await
        .unwrap();
}
