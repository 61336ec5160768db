//! Delivery: after commit only, never after rollback, once per committed event, retried,
//! independent per handler, chained through handlers' own units of work.

use std::sync::Mutex;
use std::time::Duration;

use keel::{Error, UnitOfWorkOptions, sqlx};

use super::support::*;
use super::{App, B, Database, Handler, HandlerContext, Registry, Session};

async fn place_order(session: &mut Session<'_>, order_id: i64) -> Result<(), Error> {
    session
        .unit_of_work(async |tx| {
            sqlx::query("INSERT INTO orders (id) VALUES ($1)")
                .bind(order_id)
                .execute(tx.conn())
                .await?;
            tx.record(OrderPlaced { order_id })?;
            // Anything delivered before the commit would not see the order row.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        })
        .await
}

async fn handlers_run_after_commit_and_see_its_effects(db: Database) {
    schema(&db).await;
    let app = app_with(
        db.clone(),
        vec![Handler::new::<OrderPlaced, _>("record_order", record_order)],
    );
    place_order(&mut app.session(), 1).await.unwrap();
    app.dispatcher().wait_idle().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM handled WHERE order_seen AND attempt = 1"
        )
        .await,
        1
    );
    assert_eq!(app.dispatcher().in_flight(), 0);
}

async fn a_rolled_back_unit_of_work_delivers_nothing(db: Database) {
    schema(&db).await;
    let app = app_with(
        db.clone(),
        vec![Handler::new::<OrderPlaced, _>("record_order", record_order)],
    );
    let err = app
        .session()
        .unit_of_work(async |tx| {
            sqlx::query("INSERT INTO orders (id) VALUES (1)")
                .execute(tx.conn())
                .await?;
            tx.record(OrderPlaced { order_id: 1 })?;
            assert_eq!(tx.recorded().len(), 1);
            Err::<(), _>(Error::rejected(std::io::Error::other("changed my mind")))
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("changed my mind"));
    app.dispatcher().wait_idle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM handled").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM orders").await, 0);
}

async fn events_of_failed_attempts_are_never_delivered(db: Database) {
    schema(&db).await;
    let app = app_with(
        db.clone(),
        vec![Handler::new::<OrderPlaced, _>("record_order", record_order)],
    );
    let options = UnitOfWorkOptions::named("flaky_order").retry(quick_retry(5));
    let delivered_id = app
        .session()
        .unit_of_work_with(&options, async |tx| {
            tx.record(OrderPlaced { order_id: 7 })?;
            if tx.attempt() < 3 {
                return Err(Error::LockTimeout {
                    detail: "simulated contention".into(),
                });
            }
            sqlx::query("INSERT INTO orders (id) VALUES (7)")
                .execute(tx.conn())
                .await?;
            Ok(tx.recorded()[0].id.to_string())
        })
        .await
        .unwrap();
    app.dispatcher().wait_idle().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM handled").await, 1);
    let mut conn = db.acquire().await.unwrap();
    let (event_id,): (String,) = sqlx::query_as("SELECT event_id FROM handled")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        event_id, delivered_id,
        "only the committing attempt's event"
    );
}

async fn fails_twice_then_succeeds(
    event: &OrderPlaced,
    ctx: &mut HandlerContext,
) -> Result<(), Error> {
    if ctx.attempt() < 3 {
        return Err(Error::Database(sqlx::Error::Protocol(
            "partner unavailable".into(),
        )));
    }
    note(ctx, event.order_id).await
}

async fn always_fails(_: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    Err(Error::Database(sqlx::Error::Protocol(
        "partner down".into(),
    )))
}

async fn panics_once(event: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    if ctx.attempt() == 1 {
        panic!("handler bug");
    }
    note(ctx, event.order_id).await
}

async fn rejects(_: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    Err(Error::rejected(std::io::Error::other("not for me")))
}

/// Every handler gets its own delivery: a failing, panicking or refusing handler neither
/// undoes the use case nor holds up the others; failures are retried per each handler's
/// policy, then dead-lettered with every attempt's error.
async fn handlers_fail_and_retry_independently(db: Database) {
    schema(&db).await;
    let app = app_with(
        db.clone(),
        vec![
            Handler::new::<OrderPlaced, _>("record_order", record_order),
            Handler::new::<OrderPlaced, _>("fails_twice", fails_twice_then_succeeds)
                .retry(quick_retry(5)),
            Handler::new::<OrderPlaced, _>("always_fails", always_fails).retry(quick_retry(4)),
            Handler::new::<OrderPlaced, _>("panics_once", panics_once).retry(quick_retry(3)),
            Handler::new::<OrderPlaced, _>("rejects", rejects).retry(quick_retry(5)),
        ],
    );
    place_order(&mut app.session(), 3).await.unwrap();
    delivered(&app).await;

    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM orders").await,
        1,
        "use case kept"
    );
    let handled = |h: &'static str| {
        let db = db.clone();
        async move {
            let mut conn = db.acquire().await.unwrap();
            let rows: Vec<(i64,)> =
                sqlx::query_as("SELECT attempt FROM handled WHERE handler = $1")
                    .bind(h)
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap();
            rows.into_iter().map(|r| r.0).collect::<Vec<_>>()
        }
    };
    assert_eq!(handled("record_order").await, vec![1]);
    assert_eq!(handled("fails_twice").await, vec![3]);
    assert_eq!(failures(&db, "fails_twice").await, 2);
    assert_eq!(handled("always_fails").await, Vec::<i64>::new());
    assert_eq!(
        failures(&db, "always_fails").await,
        4,
        "gave up after its policy"
    );
    assert_eq!(handled("panics_once").await, vec![2]);
    assert_eq!(failures(&db, "panics_once").await, 1);
    assert_eq!(
        failures(&db, "rejects").await,
        1,
        "a rejection is not retried"
    );

    let dead = app.dead_letters().list(10).await.unwrap();
    let mut dead_handlers: Vec<&str> = dead.iter().map(|d| d.handler.as_str()).collect();
    dead_handlers.sort();
    assert_eq!(dead_handlers, vec!["always_fails", "rejects"]);
    let always = dead.iter().find(|d| d.handler == "always_fails").unwrap();
    assert_eq!(always.attempts, 4);
    assert_eq!(always.failures.len(), 4);
    assert!(
        always
            .failures
            .iter()
            .all(|f| f.error.contains("partner down"))
    );
    assert_eq!(always.event.as_ref().unwrap().name, "test.order_placed.v1");
}

async fn issue_invoice(event: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    let order_id = event.order_id;
    ctx.unit_of_work(async |tx| {
        tx.record(InvoiceIssued { order_id })?;
        Ok(())
    })
    .await
}

async fn record_invoice(event: &InvoiceIssued, ctx: &mut HandlerContext) -> Result<(), Error> {
    note(ctx, event.order_id).await
}

async fn a_handler_chains_through_its_own_unit_of_work(db: Database) {
    schema(&db).await;
    let app = app_with(
        db.clone(),
        vec![
            Handler::new::<OrderPlaced, _>("record_order", record_order),
            Handler::new::<OrderPlaced, _>("issue_invoice", issue_invoice),
            Handler::new::<InvoiceIssued, _>("record_invoice", record_invoice),
        ],
    );
    place_order(&mut app.session(), 5).await.unwrap();
    delivered(&app).await;

    let mut conn = db.acquire().await.unwrap();
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT handler, event_id, correlation_id, causation_id FROM handled ORDER BY handler",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (invoice, order) = (&rows[0], &rows[1]);
    assert_eq!(
        (invoice.0.as_str(), order.0.as_str()),
        ("record_invoice", "record_order")
    );
    assert_eq!(
        invoice.3.as_deref(),
        Some(order.1.as_str()),
        "caused by the order event"
    );
    assert_eq!(invoice.2, order.2, "one correlation for the whole chain");
    assert_eq!(order.3, None);
}

async fn a_smuggled_receipt_cannot_be_dispatched_inside_a_unit_of_work(mut db: Database) {
    schema(&db).await;
    // No relay: the event stays in the outbox, so only the smuggled dispatch could run it.
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("record_order", record_order))
        .unwrap();
    let app = App::builder(db.clone(), registry).relay(false).start();
    let receipt = db
        .unit_of_work(async |tx| {
            sqlx::query("INSERT INTO orders (id) VALUES (9)")
                .execute(tx.conn())
                .await?;
            tx.record(OrderPlaced { order_id: 9 })?;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(receipt.events().len(), 1);
    let smuggled = Mutex::new(Some(receipt));
    let (smuggled, dispatcher) = (&smuggled, app.dispatcher());
    let refused = app
        .session()
        .unit_of_work(async |_tx| {
            let receipt = smuggled.lock().unwrap().take().expect("first attempt");
            Ok(dispatcher.dispatch(receipt).map(|_| ()))
        })
        .await
        .unwrap();
    let err = refused.unwrap_err();
    assert!(matches!(err, Error::InsideUnitOfWork { .. }), "{err}");
    assert!(err.to_string().contains("dispatch events"), "{err}");
    app.dispatcher().wait_idle().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM handled").await, 0);
}

/// A delivery the committing process reserved for its fast path counts as an attempt: a
/// relay that takes it over after that process stopped counts on from there, so a handler
/// that keeps killing its process is eventually dead-lettered.
async fn a_relay_taking_over_the_fast_path_counts_on(db: Database) {
    schema(&db).await;
    let handlers = || vec![Handler::new::<OrderPlaced, _>("record_order", record_order)];
    let short = keel::DeliveryOptions::default()
        .lease(Duration::from_millis(300))
        .handler_timeout(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(20));
    let mut registry = Registry::new();
    for handler in handlers() {
        registry.register(handler).unwrap();
    }
    // The producer reserves the delivery, then "stops" before running it: the receipt is
    // never dispatched, and it has no relay.
    let producer = App::builder(db.clone(), registry)
        .delivery(short.clone())
        .relay(false)
        .start();
    let mut producing = producer.database().clone();
    let receipt = producing
        .unit_of_work(async |tx| {
            tx.record(OrderPlaced { order_id: 7 })?;
            Ok(())
        })
        .await
        .unwrap();
    assert!(receipt.events().len() == 1);
    let () = receipt.into_value();
    let reserved = count(
        &db,
        "SELECT CAST(attempts AS BIGINT) FROM keel_deliveries WHERE handler = 'record_order'",
    )
    .await;
    assert_eq!(
        reserved, 1,
        "the reserved delivery counts as the first attempt"
    );

    let relay = app_with(db.clone(), handlers());
    delivered(&relay).await;
    assert_eq!(
        count(
            &db,
            "SELECT attempt FROM handled WHERE handler = 'record_order'"
        )
        .await,
        2
    );
    relay.shutdown().await.unwrap();
    producer.shutdown().await.unwrap();
}

/// From inside a unit of work, through a captured app: shutting it down, closing its pool
/// or running a worker would wait for the connection the unit of work holds. Each fails at
/// once instead.
async fn inside_a_unit_of_work_the_app_cannot_be_stopped(db: Database) {
    schema(&db).await;
    let app = app_with(db.clone(), vec![]);
    let escaped = app.clone();
    let escaped = &escaped;
    let started = std::time::Instant::now();
    let (shutdown, close, worker) = app
        .session()
        .unit_of_work(async |_tx| {
            let shutdown = escaped.clone().shutdown().await;
            let close = escaped.database().close().await;
            let worker = escaped
                .dispatcher()
                .run_worker(keel::WorkerLimits::default())
                .await
                .map(|_| ());
            Ok((shutdown, close, worker))
        })
        .await
        .unwrap();
    for refused in [shutdown, close, worker] {
        let err = refused.unwrap_err();
        assert!(matches!(err, Error::InsideUnitOfWork { .. }), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    app.shutdown().await.unwrap();
}

async fn logs_only(_: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    Ok(())
}

/// A delivery done a second time (an operator re-created it by hand) is marked done again,
/// with its latest attempt count, although its line in the done log already exists.
async fn a_delivery_done_twice_is_marked_done_again(db: Database) {
    schema(&db).await;
    let app = app_with(
        db.clone(),
        vec![Handler::new::<OrderPlaced, _>("logs_only", logs_only)],
    );
    place_order(&mut app.session(), 1).await.unwrap();
    delivered(&app).await;
    let mut conn = db.acquire().await.unwrap();
    sqlx::query(
        "INSERT INTO keel_deliveries (event_id, handler, status, attempts)
         SELECT event_id, handler, 'pending', attempts FROM keel_done",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    app.dispatcher().wake_relay();
    delivered(&app).await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM keel_done WHERE attempts = 2").await,
        1
    );
    app.shutdown().await.unwrap();
}

keel_testing::backend_tests!(
    a_delivery_done_twice_is_marked_done_again,
    inside_a_unit_of_work_the_app_cannot_be_stopped,
    a_relay_taking_over_the_fast_path_counts_on,
    handlers_run_after_commit_and_see_its_effects,
    a_rolled_back_unit_of_work_delivers_nothing,
    events_of_failed_attempts_are_never_delivered,
    handlers_fail_and_retry_independently,
    a_handler_chains_through_its_own_unit_of_work,
    a_smuggled_receipt_cannot_be_dispatched_inside_a_unit_of_work,
);
