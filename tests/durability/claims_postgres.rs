//! A relay's claim reads the rows it claims, and a done mark the rows it marks, not the
//! backlog, whatever the table's statistics say. A burst into a table the planner last saw
//! empty is the common case (a new service, a queue after a quiet night, messages accepted
//! from a broker): planned for a tiny table, a claim read and sorted every due row to
//! return a few, and a done mark of a batch walked every pending row, milliseconds each
//! while the backlog lasted. These functions keep their plans for the session (migration
//! `0012_generic_plans.sql`), so a plan made on empty tables, as a service's first claim
//! meets them, must also stay right once they are large.

use keel::Error;
use keel::sqlx::{self, Connection};
use keel_testing::TestDatabase;

use super::support::{Ticked, quick, registry};
use super::{App, B, Handler, HandlerContext};

const BACKLOG: i64 = 5_000;

/// Rows of `keel_deliveries` read so far by this connection's backend, by index or not.
async fn rows_read(conn: &mut sqlx::PgConnection) -> i64 {
    rows_read_of(conn, "keel_deliveries").await
}

/// Rows of `table` read so far by this connection's backend, by index or not.
async fn rows_read_of(conn: &mut sqlx::PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)
         FROM pg_stat_xact_user_tables WHERE relname = $1",
    )
    .bind(table)
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
    backlog(conn).await;
}

/// A backlog of `BACKLOG` pending deliveries (and their events), with no new statistics:
/// plans this connection made before it are not made again.
async fn backlog(conn: &mut sqlx::PgConnection) {
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
        "SELECT count(*) FROM keel_claim(10, 60000, gen_random_uuid(), ARRAY['tick_handler'], NULL)",
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

/// The claim keeps its plan for the session (migration `0012_generic_plans.sql`): a plan
/// made by a relay's first claim, on empty tables, must still look each event up by its key
/// once the tables are large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_planned_on_empty_tables_reads_what_it_claims() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    let mut conn = db.acquire().await.unwrap();
    let claim = "SELECT count(*) FROM keel_claim(10, 60000, gen_random_uuid(), ARRAY['tick_handler'], NULL)";
    sqlx::raw_sql("ANALYZE keel_deliveries; ANALYZE keel_events")
        .execute(&mut *conn)
        .await
        .unwrap();
    let nothing: i64 = sqlx::query_scalar(claim)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(nothing, 0);
    backlog(&mut conn).await;

    let mut tx = conn.begin().await.unwrap();
    let before = (
        rows_read(&mut tx).await,
        rows_read_of(&mut tx, "keel_events").await,
    );
    let claimed: i64 = sqlx::query_scalar(claim).fetch_one(&mut *tx).await.unwrap();
    let deliveries = rows_read(&mut tx).await - before.0;
    let events = rows_read_of(&mut tx, "keel_events").await - before.1;
    tx.commit().await.unwrap();
    assert_eq!(claimed, 10);
    assert!(
        deliveries < 100 && events < 100,
        "claiming 10 of {BACKLOG} deliveries with a plan made on empty tables read \
         {deliveries} deliveries and {events} events"
    );
}

/// A claim from the relay's cursor (migration `0013_claim_from.sql`) starts past the
/// deliveries the relay leased, where a claim from the first due reads each of them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_from_the_cursor_does_not_read_the_deliveries_leased_before_it() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    let mut conn = db.acquire().await.unwrap();
    backlog_after_a_quiet_spell(&mut conn).await;
    // Due one after another, as commits over time make them.
    sqlx::raw_sql(
        "UPDATE keel_deliveries d SET next_attempt_at = now() - interval '1 hour'
                                      + n.r * interval '1 millisecond'
         FROM (SELECT event_id, row_number() OVER (ORDER BY event_id) AS r
               FROM keel_deliveries) n
         WHERE d.event_id = n.event_id; ANALYZE keel_deliveries",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let leased: Option<time::OffsetDateTime> = sqlx::query_scalar(
        "SELECT max(claimed_due)
         FROM keel_claim(2000, 60000, gen_random_uuid(), ARRAY['tick_handler'], NULL)",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();

    let mut claim_10_from = async |from: Option<time::OffsetDateTime>| {
        let mut tx = conn.begin().await.unwrap();
        let before = rows_read(&mut tx).await;
        let due: Vec<time::OffsetDateTime> = sqlx::query_scalar(
            "SELECT claimed_due
             FROM keel_claim(10, 60000, gen_random_uuid(), ARRAY['tick_handler'], $1)",
        )
        .bind(from)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let read = rows_read(&mut tx).await - before;
        tx.commit().await.unwrap();
        assert_eq!(due.len(), 10);
        assert!(
            due.iter().all(|due| Some(*due) > leased),
            "claimed a leased delivery"
        );
        read
    };
    let from_first = claim_10_from(None).await;
    let from_cursor = claim_10_from(leased).await;
    assert!(
        from_first >= 2000,
        "from the first due, the claim read {from_first} rows: it should walk past the \
         2,000 leased"
    );
    assert!(
        from_cursor < 100,
        "from the cursor, claiming 10 read {from_cursor} rows"
    );
}

/// Holds the deliveries of [`a_claim_does_not_read_the_deliveries_reserved_for_the_fast_path`]
/// until it ends.
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

async fn held(_: &Ticked, _: &mut HandlerContext) -> Result<(), Error> {
    let _ = GATE.acquire().await;
    Ok(())
}

/// A delivery reserved for its process's fast path is due when its lease ends: while the
/// process runs it, relays' claims do not read it. (Due from its commit, every delivery in
/// flight would head the due order, read then skipped by every claim of every relay.)
/// Written by both forms of the outbox write: one event, and many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_does_not_read_the_deliveries_reserved_for_the_fast_path() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    let app = App::builder(
        db.clone(),
        registry(vec![Handler::new::<Ticked, _>("held", held)]),
    )
    .delivery(
        quick()
            .max_in_flight(1)
            .handler_timeout(std::time::Duration::from_secs(600)),
    )
    .relay(false)
    .start();
    let mut session = app.session();
    session
        .unit_of_work(async |tx| {
            for seq in 0..1_000 {
                tx.record(Ticked { seq })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    for seq in 1_000..1_200 {
        session
            .unit_of_work(async |tx| tx.record(Ticked { seq }))
            .await
            .unwrap();
    }

    let mut conn = db.acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let reserved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM keel_deliveries WHERE leased_until > now() AND attempts = 1",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let before = rows_read(&mut tx).await;
    let claimed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM keel_claim(10, 60000, gen_random_uuid(), ARRAY['held'], NULL)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let read = rows_read(&mut tx).await - before;
    tx.commit().await.unwrap();
    drop(conn);
    GATE.add_permits(10_000);
    app.shutdown().await.unwrap();
    assert!(reserved >= 1_190, "{reserved} deliveries reserved");
    assert_eq!(claimed, 0, "claimed a delivery reserved for the fast path");
    assert!(
        read < 50,
        "a claim with {reserved} deliveries reserved for the fast path read {read} rows"
    );
}

/// A batch of 200 marked done reads its 200 rows, with the conflict check or without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_mark_reads_what_it_marks_whatever_the_statistics() {
    marks_read_what_they_mark("keel_mark_done", 200, 1_000).await;
}

/// A mark of a few deliveries through `keel_mark_done_few`, which processes of an older
/// build still call during a rolling deploy (migration `0015_mark_few_delegates.sql`),
/// reads only them.
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
    // Planned first on empty tables, as a service's first marks are (analyzed first: a
    // table's first statistics would make PostgreSQL plan again), more often than the
    // five times PostgreSQL plans a prepared statement with its arguments before it may
    // keep a generic plan for the session.
    sqlx::raw_sql("ANALYZE keel_deliveries; ANALYZE keel_done")
        .execute(&mut *conn)
        .await
        .unwrap();
    let sql = format!("SELECT {function}('tick_handler', $1, $2)");
    for append in [true, false].repeat(8) {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(vec![uuid::Uuid::now_v7()])
            .bind(append)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    backlog(&mut conn).await;

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
        let marked: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
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

/// The accept's done check (`keel_drop_done`) keeps its plan for the session: made on
/// empty tables, it must still look the done log and the error rows up by key once they are
/// large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accepts_done_check_reads_only_its_deliveries_after_the_done_log_grew() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    let mut conn = db.acquire().await.unwrap();
    let check = "SELECT keel_drop_done('tick_handler', $1)";
    sqlx::raw_sql("ANALYZE keel_deliveries; ANALYZE keel_done; ANALYZE keel_delivery_errors")
        .execute(&mut *conn)
        .await
        .unwrap();
    let dropped: i64 = sqlx::query_scalar(check)
        .bind(vec![uuid::Uuid::now_v7()])
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(dropped, 0);
    backlog(&mut conn).await;
    // The backlog done, every delivery with an error row, and 5 deliveries accepted again,
    // arrived dead (their error rows go with them).
    sqlx::raw_sql(
        "WITH d AS (DELETE FROM keel_deliveries RETURNING event_id, handler, attempts)
         INSERT INTO keel_done (event_id, handler, attempts) SELECT * FROM d;
         INSERT INTO keel_deliveries (event_id, handler, status)
         SELECT event_id, handler, 'dead' FROM keel_done LIMIT 5;
         INSERT INTO keel_delivery_errors (event_id, handler, attempt, error)
         SELECT event_id, handler, 0, 'arrived dead' FROM keel_done",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let again: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM keel_deliveries")
        .fetch_all(&mut *conn)
        .await
        .unwrap();

    let mut tx = conn.begin().await.unwrap();
    let before = (
        rows_read_of(&mut tx, "keel_done").await,
        rows_read_of(&mut tx, "keel_delivery_errors").await,
    );
    let dropped: i64 = sqlx::query_scalar(check)
        .bind(&again)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let done = rows_read_of(&mut tx, "keel_done").await - before.0;
    let errors = rows_read_of(&mut tx, "keel_delivery_errors").await - before.1;
    tx.commit().await.unwrap();
    assert_eq!(dropped, 5);
    let error_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM keel_delivery_errors")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(error_rows, BACKLOG - 5, "the dropped arrivals' error rows");
    assert!(
        done < 50 && errors < 50,
        "checking 5 accepted deliveries against a done log of {BACKLOG} read {done} of its \
         rows and {errors} error rows: the check kept a plan made on empty tables"
    );
}
