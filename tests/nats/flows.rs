//! Events from one service's outbox reach another service's handlers through JetStream,
//! each effect once; a message that cannot be read waits in the consumer's dead letter.

use std::time::Duration;

use keel::nats::wire::{self, Bytes};
use keel::nats::{ConsumerOptions, Consumers, JetStream, Transport, WireMessage};
use keel::{Envelope, Error, sqlx};

use super::support::*;
use super::{App, Database, Handler, HandlerContext, Registry};

const EVENTS: i64 = 300;

/// Once what the broker still holds has had time to arrive: everything delivered, nothing
/// dead, and exactly `effects` effects.
async fn settled(app: &App, db: &Database, effects: i64) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        app.wait_until_delivered(Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert_eq!(scalar(db, "SELECT COUNT(*) FROM effects").await, effects);
    assert_eq!(app.dead_letters().count().await.unwrap(), 0);
}

/// `event` as the broker carries it, on its subject.
fn wire_of(broker: &JetStream, event: &Envelope) -> WireMessage {
    let subject = broker.options().subjects().message(&event.name).unwrap();
    wire::encode(subject, event).unwrap()
}

/// One message in the dead letter of each of the two handlers, with `reason`.
async fn dead_for_both_handlers(app: &App, db: &Database, reason: &str) {
    let dead = until(
        db,
        "SELECT COUNT(*) FROM keel_deliveries WHERE status = 'dead'",
        2,
    )
    .await;
    assert_eq!(dead, 2, "one dead entry per handler");
    let listed = app.dead_letters().list(10).await.unwrap();
    assert!(
        listed
            .iter()
            .all(|d| d.failures.iter().any(|f| f.error.contains(reason))),
        "{listed:?}"
    );
}

async fn exactly_once(db: &Database, events: i64) {
    let effects = until(db, "SELECT COUNT(*) FROM effects", events * 2).await;
    assert_eq!(effects, events * 2, "effects missing");
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(DISTINCT seq) FROM effects WHERE handler = 'effect_a'"
        )
        .await,
        events
    );
    assert_eq!(
        scalar(
            db,
            "SELECT COUNT(DISTINCT seq) FROM effects WHERE handler = 'effect_b'"
        )
        .await,
        events
    );
}

/// Two instances of the consuming service share its consumers; both of its handlers get
/// every event; the producer's forwarding deliveries all end done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_another_service_once_per_handler() {
    let Some(broker) = broker().await else { return };
    let (orders_db, billing_db) = (database().await, database().await);
    let (orders_db, billing_db) = (orders_db.database(), billing_db.database());
    effects_table(billing_db).await;
    let orders = producer(orders_db, &broker);
    let (one, one_consumers) = consumer(billing_db, &broker);
    let (two, two_consumers) = consumer(&billing_db.connect_again().await.unwrap(), &broker);
    for seq in 0..EVENTS {
        tick(&orders, seq).await;
    }
    exactly_once(billing_db, EVENTS).await;
    assert!(
        orders
            .wait_until_delivered(std::time::Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(
        scalar(orders_db, "SELECT COUNT(*) FROM keel_done").await,
        EVENTS,
        "every event forwarded once"
    );
    for app in [&orders, &one, &two] {
        assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    }
    one_consumers.shutdown().await;
    two_consumers.shutdown().await;
    for app in [orders, one, two] {
        app.shutdown().await.unwrap();
    }
}

/// The same event published again after the broker's duplicate window (a forwarder that
/// died before marking it done, and came back late) is accepted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_received_twice_runs_once() {
    let Some(broker) = broker_with(|o| o.duplicate_window(Duration::from_millis(100))).await else {
        return;
    };
    let billing_db = database().await;
    let billing_db = billing_db.database();
    effects_table(billing_db).await;
    let (billing, consumers) = consumer(billing_db, &broker);
    let message = wire_of(&broker, &Envelope::wrap(&Ticked { seq: 1 }).unwrap());
    broker.publish(message.clone()).await.unwrap();
    exactly_once(billing_db, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.publish(message).await.unwrap();
    assert_eq!(
        broker.stored_messages().await.unwrap(),
        2,
        "the broker kept both"
    );
    // The second copy is received and accepted as nothing.
    settled(&billing, billing_db, 2).await;
    consumers.shutdown().await;
    billing.shutdown().await.unwrap();
}

/// A message that is not a Keel envelope waits in the consumer's dead letter with its
/// reason; the messages around it are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_waits_in_the_dead_letter() {
    let Some(broker) = broker().await else { return };
    let billing_db = database().await;
    let billing_db = billing_db.database();
    effects_table(billing_db).await;
    let (billing, consumers) = consumer(billing_db, &broker);
    let good = |seq| wire_of(&broker, &Envelope::wrap(&Ticked { seq }).unwrap());
    broker.publish(good(1)).await.unwrap();
    broker
        .publish(WireMessage {
            subject: broker
                .options()
                .subjects()
                .message("test.ticked.v1")
                .unwrap(),
            headers: vec![],
            body: Bytes::from_static(b"not json"),
        })
        .await
        .unwrap();
    broker.publish(good(2)).await.unwrap();
    exactly_once(billing_db, 2).await;
    dead_for_both_handlers(&billing, billing_db, "cannot be read").await;
    consumers.shutdown().await;
    billing.shutdown().await.unwrap();
}

/// A message the database refuses for good (PostgreSQL's `jsonb` refuses `\u0000`) neither
/// comes back for ever nor holds the messages around it: they are handled, and on
/// PostgreSQL it waits in the dead letter with the database's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_waits_in_the_dead_letter() {
    let Some(broker) = broker().await else { return };
    let billing_db = database().await;
    let billing_db = billing_db.database();
    effects_table(billing_db).await;
    let (billing, consumers) = consumer(billing_db, &broker);
    let mut refused = Envelope::wrap(&Ticked { seq: 2 }).unwrap();
    refused.payload = serde_json::json!({"seq": 2, "note": "\u{0}"});
    for message in [
        wire_of(&broker, &Envelope::wrap(&Ticked { seq: 1 }).unwrap()),
        wire_of(&broker, &refused),
        wire_of(&broker, &Envelope::wrap(&Ticked { seq: 3 }).unwrap()),
    ] {
        broker.publish(message).await.unwrap();
    }
    let on_postgres = billing_db.url().starts_with("postgres");
    if on_postgres {
        assert_eq!(
            until(billing_db, "SELECT COUNT(*) FROM effects", 4).await,
            4,
            "the messages around the refused one are handled"
        );
        dead_for_both_handlers(&billing, billing_db, "the database refused").await;
    } else {
        // SQLite stores the text as it is: the message is handled like the others.
        exactly_once(billing_db, 3).await;
    }
    consumers.shutdown().await;
    billing.shutdown().await.unwrap();
}

/// After the broker lost data, the producing service publishes its kept events again; the
/// consuming service, which had them already, runs nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_republished_from_the_outbox_and_run_once() {
    let Some(broker) = broker_with(|o| o.duplicate_window(Duration::from_millis(100))).await else {
        return;
    };
    let (orders_db, billing_db) = (database().await, database().await);
    let (orders_db, billing_db) = (orders_db.database(), billing_db.database());
    effects_table(billing_db).await;
    let since = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let orders = producer(orders_db, &broker);
    let (billing, consumers) = consumer(billing_db, &broker);
    for seq in 0..5 {
        tick(&orders, seq).await;
    }
    exactly_once(billing_db, 5).await;
    assert!(
        orders
            .wait_until_delivered(Duration::from_secs(10))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let republished = keel::nats::republish(orders.dispatcher(), since)
        .await
        .unwrap();
    assert_eq!(republished, 5);
    assert!(
        orders
            .wait_until_delivered(Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert_eq!(
        broker.stored_messages().await.unwrap(),
        10,
        "published again"
    );
    settled(&billing, billing_db, 10).await;
    consumers.shutdown().await;
    orders.shutdown().await.unwrap();
    billing.shutdown().await.unwrap();
}

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn record_trace(_: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    let trace = ctx.envelope().headers.get("traceparent").cloned();
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO traces (traceparent) VALUES ($1)")
            .bind(trace.as_deref().unwrap_or("none"))
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

/// The consuming service of the trace tests: its one `handler` writes what it sees into
/// the table `traces`; it consumes as `service`.
async fn writing_traces(
    db: &Database,
    broker: &JetStream,
    handler: Handler,
    service: &str,
) -> (App, Consumers) {
    db.execute_script("CREATE TABLE traces (traceparent TEXT NOT NULL)")
        .await
        .unwrap();
    let name = handler.name();
    let mut registry = Registry::new();
    registry.register(handler).unwrap();
    let app = App::builder(db.clone(), registry).delivery(quick()).start();
    let consumers = Consumers::start(
        app.dispatcher(),
        broker.clone(),
        ConsumerOptions::new(service),
        &[name],
    )
    .unwrap();
    (app, consumers)
}

/// A trace context set in one service's unit of work reaches the handler in the other:
/// stored with the event, read back by the relay, published as a message header, accepted
/// with the event, read back by the other relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_context_travels_with_its_event() {
    let Some(broker) = broker().await else { return };
    let (orders_db, billing_db) = (database().await, database().await);
    let (orders_db, billing_db) = (orders_db.database(), billing_db.database());
    let handler = Handler::new::<Ticked, _>("trace", record_trace);
    let (billing, consumers) = writing_traces(billing_db, &broker, handler, "billing").await;
    // No fast path: the forwarder reads the event back from the database.
    let orders = producer_with(orders_db, &broker, quick().fast_path(false));
    orders
        .session()
        .unit_of_work(async |tx| {
            tx.header("traceparent", TRACE)?;
            tx.record(Ticked { seq: 1 })
        })
        .await
        .unwrap();
    assert_eq!(until(billing_db, "SELECT COUNT(*) FROM traces", 1).await, 1);
    let mut conn = billing_db.acquire().await.unwrap();
    let (trace,): (String,) = sqlx::query_as("SELECT traceparent FROM traces")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(trace, TRACE);
    consumers.shutdown().await;
    orders.shutdown().await.unwrap();
    billing.shutdown().await.unwrap();
}

/// Writes the trace id of its own span.
async fn record_span_trace(_: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::Span::current().context();
    let trace = span.span().span_context().trace_id().to_string();
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO traces (traceparent) VALUES ($1)")
            .bind(trace.as_str())
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

/// Without any header set by the application: the span that records the event is a
/// request's continuing a caller's trace; the handler's span in the other service, after
/// both outboxes and the broker, continues the same trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_span_s_trace_reaches_the_other_service_s_handler() {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    crate::test_subscriber();
    let Some(broker) = broker().await else { return };
    let (orders_db, billing_db) = (database().await, database().await);
    let (orders_db, billing_db) = (orders_db.database(), billing_db.database());
    let handler = Handler::new::<Ticked, _>("span_trace", record_span_trace);
    let (billing, consumers) = writing_traces(billing_db, &broker, handler, "billing_spans").await;
    let orders = producer_with(orders_db, &broker, quick().fast_path(false));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = tracing::info_span!("request");
    let caller = SpanContext::new(
        TraceId::from_hex(trace_id).unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    request
        .set_parent(opentelemetry::Context::new().with_remote_span_context(caller))
        .unwrap();
    orders
        .session()
        .unit_of_work(async |tx| tx.record(Ticked { seq: 1 }))
        .instrument(request)
        .await
        .unwrap();
    assert_eq!(until(billing_db, "SELECT COUNT(*) FROM traces", 1).await, 1);
    let mut conn = billing_db.acquire().await.unwrap();
    let (trace,): (String,) = sqlx::query_as("SELECT traceparent FROM traces")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(trace, trace_id);
    consumers.shutdown().await;
    orders.shutdown().await.unwrap();
    billing.shutdown().await.unwrap();
}
