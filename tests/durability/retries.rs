//! Per-handler retries with the configured backoff, the dead letter, and retrying from it.

use std::time::Duration;

use keel::{DeliveryOptions, Error, RetryPolicy, sqlx};

use super::support::*;
use super::{B, Database, Dispatcher, Handler, HandlerContext, POSTGRES, Session};

/// Fails its first 3 attempts.
async fn flaky(event: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    if ctx.attempt() <= 3 {
        return Err(Error::Database(sqlx::Error::Protocol(format!(
            "partner busy (attempt {})",
            ctx.attempt()
        ))));
    }
    write_effect(event.seq, ctx).await
}

/// Fails until `switches.fixed` is 1 ("partner down" at 0, "partner refuses" above).
async fn broken_until_fixed(event: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    let (seq, handler, attempt) = (event.seq, ctx.handler(), i64::from(ctx.attempt()));
    ctx.unit_of_work(async |tx| {
        let (fixed,): (i64,) = sqlx::query_as("SELECT fixed FROM switches")
            .fetch_one(tx.conn())
            .await?;
        match fixed {
            0 => Err(Error::Database(sqlx::Error::Protocol(
                "partner down".into(),
            ))),
            1 => insert_effect(tx, seq, handler, attempt).await,
            _ => Err(Error::Database(sqlx::Error::Protocol(
                "partner refuses the request".into(),
            ))),
        }
    })
    .await
}

async fn tick(session: &mut Session<'_>, seq: i64) {
    session
        .unit_of_work(async |tx| {
            tx.record(Ticked { seq })?;
            Ok(())
        })
        .await
        .unwrap();
}

/// Sets the partner's switch, retries `broken`'s dead delivery, and waits for the outcome.
async fn switch_and_retry(db: &Database, app: &super::App, fixed: i64, event_id: keel::EventId) {
    let sql = if fixed == 1 {
        "UPDATE switches SET fixed = 1"
    } else {
        "UPDATE switches SET fixed = 2"
    };
    db.execute_script(sql).await.unwrap();
    assert!(app.dead_letters().retry(event_id, "broken").await.unwrap());
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
}

async fn retried_with_backoff_then_dead_then_retried_from_the_api(db: Database) {
    schema(&db).await;
    db.execute_script(
        "CREATE TABLE switches (fixed BIGINT NOT NULL); INSERT INTO switches VALUES (0);",
    )
    .await
    .unwrap();
    let backoff = RetryPolicy::default()
        .max_attempts(5)
        .base_delay(Duration::from_millis(100))
        .multiplier(2.0)
        .jitter(0.0);
    let app = app(
        &db,
        registry(vec![
            Handler::new::<Ticked, _>("flaky", flaky).retry(backoff.clone()),
            Handler::new::<Ticked, _>("broken", broken_until_fixed).retry(backoff.max_attempts(3)),
        ]),
    );
    tick(&mut app.session(), 1).await;
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );

    // flaky: done on its 4th attempt, each retry after at least the configured delay, as
    // the database's clock (which stamps `failed_at`) measures it, in milliseconds.
    let mut conn = db.acquire().await.unwrap();
    let failed: Vec<(i64, i64)> = sqlx::query_as(if POSTGRES {
        "SELECT CAST(attempt AS BIGINT),
                CAST(floor(EXTRACT(EPOCH FROM failed_at) * 1000) AS BIGINT)
         FROM keel_delivery_errors WHERE handler = 'flaky' ORDER BY attempt"
    } else {
        "SELECT attempt, failed_at FROM keel_delivery_errors WHERE handler = 'flaky' ORDER BY attempt"
    })
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    assert_eq!(
        failed.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for (pair, expected_ms) in failed.windows(2).zip([100, 200]) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= expected_ms,
            "attempt {} came {gap} ms after the previous failure",
            pair[1].0
        );
    }
    assert_eq!(
        scalar(&db, "SELECT attempt FROM effects WHERE handler = 'flaky'").await,
        4
    );

    // broken: dead after 3 attempts, with every error.
    let listed = app.dead_letters().list(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handler, "broken");
    let dead = app
        .dead_letters()
        .show(listed[0].event_id, "broken")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.failures.len(), 3);
    assert!(
        dead.failures
            .iter()
            .all(|f| f.error.contains("partner down"))
    );
    assert!(
        !app.dead_letters()
            .retry(dead.event_id, "flaky")
            .await
            .unwrap(),
        "flaky is not dead"
    );

    // Retried from the dead letter while still failing, for another reason: a fresh run of
    // its policy whose attempts count on from the first run's, and whose errors join the
    // history, none dropped.
    switch_and_retry(&db, &app, 2, dead.event_id).await;
    let again = app
        .dead_letters()
        .show(dead.event_id, "broken")
        .await
        .unwrap()
        .expect("dead again");
    assert_eq!(again.attempts, 6);
    assert_eq!(
        again.failures.iter().map(|f| f.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert!(
        again.failures[..3]
            .iter()
            .all(|f| f.error.contains("partner down"))
    );
    assert!(
        again.failures[3..]
            .iter()
            .all(|f| f.error.contains("partner refuses")),
        "the second run's errors are kept: {:?}",
        again.failures
    );

    // Fixed, then retried from the dead letter: done, on attempt 7.
    switch_and_retry(&db, &app, 1, dead.event_id).await;
    assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM effects WHERE handler = 'broken'").await,
        1
    );
    assert_eq!(
        scalar(&db, "SELECT attempt FROM effects WHERE handler = 'broken'").await,
        7
    );

    // Discarding removes a dead delivery and its history.
    db.execute_script("UPDATE switches SET fixed = 0")
        .await
        .unwrap();
    tick(&mut app.session(), 2).await;
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
    let dead = app.dead_letters().list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        app.dead_letters()
            .discard(dead[0].event_id, "broken")
            .await
            .unwrap()
    );
    assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    app.shutdown().await.unwrap();
}

/// Milliseconds between the one failed attempt and the delivery's completion.
async fn waited_for_the_retry_ms(db: &Database) -> i64 {
    scalar(
        db,
        if POSTGRES {
            "SELECT CAST(EXTRACT(EPOCH FROM (d.done_at - e.failed_at)) * 1000 AS BIGINT)
             FROM keel_done d JOIN keel_delivery_errors e
               ON e.event_id = d.event_id AND e.handler = d.handler"
        } else {
            "SELECT d.done_at - e.failed_at FROM keel_done d JOIN keel_delivery_errors e
               ON e.event_id = d.event_id AND e.handler = d.handler"
        },
    )
    .await
}

/// The partner answers "busy, try again in 600 ms" once.
async fn busy_once(event: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    if ctx.attempt() == 1 {
        return Err(Error::retry_after(
            Duration::from_millis(600),
            Error::external("partner: 429 Too Many Requests"),
        ));
    }
    write_effect(event.seq, ctx).await
}

/// A handler's failure that says when to try again is retried then, not after its
/// policy's delay (10 ms here).
async fn a_failure_that_says_when_is_retried_then(db: Database) {
    schema(&db).await;
    let app = app(
        &db,
        registry(vec![
            Handler::new::<Ticked, _>("busy_once", busy_once).retry(
                RetryPolicy::default()
                    .base_delay(Duration::from_millis(10))
                    .jitter(0.0),
            ),
        ]),
    );
    tick(&mut app.session(), 1).await;
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT attempt FROM effects WHERE handler = 'busy_once'"
        )
        .await,
        2
    );
    let waited_ms = waited_for_the_retry_ms(&db).await;
    assert!(waited_ms >= 600, "retried {waited_ms} ms after the failure");
    app.shutdown().await.unwrap();
}

/// A retry runs when it is due, not at the relay's next poll: the process that scheduled
/// it wakes its relay then.
async fn a_retry_runs_when_due_not_at_the_next_poll(db: Database) {
    schema(&db).await;
    let registry = registry(vec![
        Handler::new::<Ticked, _>("busy_once", busy_once).retry(
            RetryPolicy::default()
                .base_delay(Duration::from_millis(10))
                .jitter(0.0),
        ),
    ]);
    let app = super::App::builder(db.clone(), registry)
        .delivery(DeliveryOptions::default().poll_interval(Duration::from_secs(30)))
        .start();
    tick(&mut app.session(), 1).await;
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
    let waited_ms = waited_for_the_retry_ms(&db).await;
    assert!(
        (600..3_000).contains(&waited_ms),
        "retried {waited_ms} ms after a failure that asked for 600 ms (the relay polls every \
         30 s)"
    );
    app.shutdown().await.unwrap();
}

keel_testing::backend_tests!(
    a_retry_runs_when_due_not_at_the_next_poll,
    a_failure_that_says_when_is_retried_then,
    retried_with_backoff_then_dead_then_retried_from_the_api,
    a_retry_is_never_due_before_its_delay_after_the_stamped_failure,
    a_delay_beyond_any_clock_is_recorded_not_a_panic
);

/// Each failure's stamp (`failed_at`, what operators and the dead letter show) and its
/// retry's due time come from one reading of the database's clock: the retry is never due
/// sooner after the stamped failure than the policy's delay, not even by a millisecond.
async fn a_retry_is_never_due_before_its_delay_after_the_stamped_failure(db: Database) {
    const EVENTS: i64 = 200;
    schema(&db).await;
    let app = app(
        &db,
        registry(vec![
            Handler::new::<Ticked, _>("always_fails", always_fails).retry(
                RetryPolicy::default()
                    .base_delay(Duration::from_secs(3600))
                    .jitter(0.0),
            ),
        ]),
    );
    for seq in 1..=EVENTS {
        tick(&mut app.session(), seq).await;
    }
    let failed = "SELECT COUNT(*) FROM keel_delivery_errors";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while scalar(&db, failed).await < EVENTS {
        assert!(
            std::time::Instant::now() < deadline,
            "not every delivery failed once"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let early = scalar(
        &db,
        if POSTGRES {
            "SELECT COUNT(*) FROM keel_deliveries d JOIN keel_delivery_errors f
                 ON f.event_id = d.event_id AND f.handler = d.handler
             WHERE d.next_attempt_at < f.failed_at + interval '1 hour'"
        } else {
            "SELECT COUNT(*) FROM keel_deliveries d JOIN keel_delivery_errors f
                 ON f.event_id = d.event_id AND f.handler = d.handler
             WHERE d.next_attempt_at < f.failed_at + 3600000"
        },
    )
    .await;
    assert_eq!(
        early, 0,
        "retries due before their delay after the stamped failure"
    );
    app.shutdown().await.unwrap();
}

async fn always_fails(_: &Ticked, _: &mut HandlerContext) -> Result<(), Error> {
    Err(Error::Database(sqlx::Error::Protocol(
        "partner down".into(),
    )))
}

/// A policy with no cap, far into its attempts, asks for a delay past any clock: the
/// failure is recorded with the longest delay, instead of overflowing.
async fn a_delay_beyond_any_clock_is_recorded_not_a_panic(db: Database) {
    schema(&db).await;
    let handlers = || {
        registry(vec![
            Handler::new::<Ticked, _>("always_fails", always_fails).retry(
                RetryPolicy::default()
                    .max_attempts(u32::MAX)
                    .base_delay(Duration::from_secs(1))
                    .multiplier(10.0)
                    .max_delay(Duration::MAX),
            ),
        ])
    };
    // Routed for relays only, then given 80 earlier attempts.
    let producer = Dispatcher::with_options(
        db.clone(),
        handlers(),
        DeliveryOptions::default().fast_path(false),
    );
    producer
        .database()
        .clone()
        .unit_of_work(async |tx| {
            tx.record(Ticked { seq: 1 })?;
            Ok(())
        })
        .await
        .unwrap()
        .into_value();
    db.execute_script("UPDATE keel_deliveries SET attempts = 80")
        .await
        .unwrap();
    let app = app(&db, handlers());
    for _ in 0..100 {
        if scalar(
            &db,
            "SELECT COUNT(*) FROM keel_delivery_errors WHERE attempt = 81",
        )
        .await
            == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        scalar(
            &db,
            if POSTGRES {
                "SELECT COUNT(*) FROM keel_deliveries WHERE status = 'pending'
                   AND leased_by IS NULL AND next_attempt_at > now() + interval '50 years'"
            } else {
                "SELECT COUNT(*) FROM keel_deliveries WHERE status = 'pending'
                   AND leased_by IS NULL AND next_attempt_at >
                       CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + 1576800000000"
            }
        )
        .await,
        1,
        "the 81st failure is recorded, due in about a hundred years"
    );
    app.shutdown().await.unwrap();
}
