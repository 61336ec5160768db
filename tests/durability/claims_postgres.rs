//! A relay's claim reads the rows it claims, and a done mark the rows it marks, not the
//! backlog, whatever the table's statistics say. A burst into a table the planner last saw
//! empty is the common case (a new service, a queue after a quiet night, messages accepted
//! from a broker): planned for a tiny table, a claim read and sorted every due row to
//! return a few, and a done mark of a batch walked every pending row, milliseconds each
//! while the backlog lasted.

use keel::sqlx::{self, Connection};
use keel_testing::TestDatabase;

use super::B;

const BACKLOG: i64 = 5_000;

/// Rows of `keel_deliveries` read so far by this connection's backend, by index or not.
async fn rows_read(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)
         FROM pg_stat_xact_user_tables WHERE relname = 'keel_deliveries'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// A backlog of `BACKLOG` pending deliveries (and their events) in tables the planner last
/// saw empty.
async fn backlog_after_a_quiet_spell(conn: &mut sqlx::PgConnection) {
    sqlx::raw_sql("ANALYZE keel_deliveries; ANALYZE keel_events; ANALYZE keel_done")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO keel_events (id, name, aggregate_type, aggregate_id, occurred_at, payload,
                                  correlation_id, routed)
         SELECT gen_random_uuid(), 'tick', 'Clock', '1', now(), '{}', gen_random_uuid(), TRUE
         FROM generate_series(1, $1)",
    )
    .bind(BACKLOG)
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO keel_deliveries (event_id, handler, status)
         SELECT id, 'tick_handler', 'pending' FROM keel_events",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_reads_what_it_claims_whatever_the_statistics() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    let mut conn = db.acquire().await.unwrap();
    backlog_after_a_quiet_spell(&mut conn).await;

    let mut tx = conn.begin().await.unwrap();
    let before = rows_read(&mut tx).await;
    let claimed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM keel_claim(10, 60000, gen_random_uuid(), ARRAY['tick_handler'])",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let read = rows_read(&mut tx).await - before;
    tx.commit().await.unwrap();
    assert_eq!(claimed, 10);
    assert!(
        read < 100,
        "claiming 10 of {BACKLOG} deliveries read {read} rows: the claim's plan depends on \
         the table's statistics again"
    );
}

/// A batch of 200 marked done reads its 200 rows, with the conflict check or without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_mark_reads_what_it_marks_whatever_the_statistics() {
    marks_read_what_they_mark("keel_mark_done", 200, 1_000).await;
}

/// A mark of a few deliveries (the function without planner settings) reads only them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_of_a_few_reads_only_them_whatever_the_statistics() {
    marks_read_what_they_mark("keel_mark_done_few", 5, 50).await;
}

/// `function` marks `count` of the backlog done, appending and then with the conflict
/// check, each time reading fewer than `most` rows.
async fn marks_read_what_they_mark(function: &str, count: i64, most: i64) {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    let mut conn = db.acquire().await.unwrap();
    backlog_after_a_quiet_spell(&mut conn).await;

    for append in [true, false] {
        let mut tx = conn.begin().await.unwrap();
        let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT event_id FROM keel_deliveries WHERE status = 'pending' LIMIT $1",
        )
        .bind(count)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let before = rows_read(&mut tx).await;
        let sql = format!("SELECT {function}('tick_handler', $1, $2)");
        let marked: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(ids)
            .bind(append)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let read = rows_read(&mut tx).await - before;
        tx.commit().await.unwrap();
        assert_eq!(marked, count);
        assert!(
            read < most,
            "marking {count} of {BACKLOG} deliveries done with {function} (append: \
             {append}) read {read} rows: its plan depends on the table's statistics again"
        );
    }
}
