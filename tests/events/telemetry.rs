//! The metrics after a scripted run (one handler done, one failing into the dead letter,
//! one retrying, one unit of work re-run after a conflict), read from a recorder local to
//! the test's thread: counters, the attempt histogram, and the gauges the relay sets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel::{Admin, DeliveryOptions, Error, RetryPolicy, UnitOfWorkOptions, Version, sqlx};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

use super::support::OrderPlaced;
use super::{App, Database, Handler, HandlerContext, Registry};
use crate::test_subscriber;

async fn ok(_: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    Ok(())
}

async fn broken(event: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    Err(Error::Database(sqlx::Error::Protocol(format!(
        "partner refused order {}",
        event.order_id
    ))))
}

async fn later(_: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    Err(Error::Database(sqlx::Error::Protocol(
        "partner busy".into(),
    )))
}

/// The value of each metric by name and sorted labels (`name{k=v,…}`).
fn values(snapshotter: &Snapshotter) -> BTreeMap<String, DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (name(&key), value))
        .collect()
}

fn name(key: &CompositeKey) -> String {
    let mut labels: Vec<String> = key
        .key()
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    let kind = match key.kind() {
        MetricKind::Counter => "",
        MetricKind::Gauge => "(gauge)",
        MetricKind::Histogram => "(histogram)",
    };
    format!("{}{{{}}}{kind}", key.key().name(), labels.join(","))
}

fn counter(values: &BTreeMap<String, DebugValue>, key: &str) -> u64 {
    match values.get(key) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{key}: {other:?} in {values:#?}"),
    }
}

fn gauge(values: &BTreeMap<String, DebugValue>, key: &str) -> f64 {
    match values.get(&format!("{key}(gauge)")) {
        Some(DebugValue::Gauge(n)) => n.into_inner(),
        other => panic!("{key}: {other:?} in {values:#?}"),
    }
}

async fn run(db: Database) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Local to this thread: the test's runtime has one thread, so every task it spawns
    // records here, and tests running beside it do not.
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let fast = RetryPolicy::default()
        .max_attempts(2)
        .base_delay(Duration::from_millis(10))
        .jitter(0.0);
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("ok", ok))
        .unwrap();
    registry
        .register(Handler::new::<OrderPlaced, _>("broken", broken).retry(fast))
        .unwrap();
    registry
        .register(
            Handler::new::<OrderPlaced, _>("later", later)
                .retry(RetryPolicy::default().base_delay(Duration::from_secs(3600))),
        )
        .unwrap();
    let app = App::builder(db.clone(), registry)
        .delivery(DeliveryOptions::default().poll_interval(Duration::from_millis(20)))
        .start();
    let conflicts = AtomicU32::new(0);
    for order_id in 0..3 {
        app.session()
            .unit_of_work_with(&UnitOfWorkOptions::named("place_order"), async |tx| {
                // The first attempt of the first order meets a concurrent save.
                if order_id == 0 && conflicts.fetch_add(1, Ordering::Relaxed) == 0 {
                    return Err(Error::VersionConflict {
                        aggregate: "Order",
                        id: "0".into(),
                        expected: Version::INITIAL,
                    });
                }
                tx.record(OrderPlaced { order_id })
            })
            .await
            .unwrap();
    }
    let admin = Admin::new(db.clone());
    let mut status = admin.status().await.unwrap();
    for _ in 0..300 {
        let by = |name: &str| status.handlers.iter().find(|h| h.handler == name).cloned();
        let settled = by("ok").is_some_and(|h| h.done_last_minute == 3)
            && by("broken").is_some_and(|h| h.dead == 3)
            && by("later").is_some_and(|h| h.retrying == 3);
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = admin.status().await.unwrap();
    }
    admin.record_gauges().await.unwrap();
    let values = values(&snapshotter);

    assert_eq!(
        counter(
            &values,
            "keel_unit_of_work_attempts_total{name=place_order}"
        ),
        4
    );
    assert_eq!(
        counter(
            &values,
            "keel_unit_of_work_retries_total{cause=version_conflict,name=place_order}"
        ),
        1
    );
    assert_eq!(
        counter(&values, "keel_deliveries_done_total{handler=ok}"),
        3
    );
    assert_eq!(
        counter(&values, "keel_deliveries_failed_total{handler=broken}"),
        6
    );
    assert_eq!(
        counter(&values, "keel_deliveries_retried_total{handler=broken}"),
        3
    );
    assert_eq!(
        counter(&values, "keel_deliveries_dead_total{handler=broken}"),
        3
    );
    assert_eq!(
        counter(&values, "keel_deliveries_retried_total{handler=later}"),
        3
    );
    assert!(!values.contains_key("keel_deliveries_dead_total{handler=later}"));
    match values.get("keel_delivery_duration_seconds{handler=ok}(histogram)") {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 3),
        other => panic!("histogram: {other:?}"),
    }
    assert_eq!(gauge(&values, "keel_backlog{handler=later}"), 3.0);
    assert_eq!(gauge(&values, "keel_backlog{handler=ok}"), 0.0);
    assert_eq!(gauge(&values, "keel_dead_letters{handler=broken}"), 3.0);
    assert!(gauge(&values, "keel_oldest_pending_seconds{handler=later}") >= 0.0);
    assert_eq!(gauge(&values, "keel_unrouted_events{}"), 0.0);
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn recorded() {
    if let Some(test) = keel_testing::TestDatabase::<super::B>::new().await {
        run(test.database().clone()).await;
    }
}

// ---- traces across the outbox ---------------------------------------------------------

/// The trace of the request that records the events: a remote parent, as an HTTP layer
/// would extract it from the request's `traceparent`.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The current span's trace id, as OpenTelemetry sees it.
fn current_trace() -> String {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

/// Writes the trace id its span belongs to.
async fn traced(event: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    let (order_id, trace) = (event.order_id, current_trace());
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO traces (order_id, trace) VALUES ($1, $2)")
            .bind(order_id)
            .bind(trace.as_str())
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

fn traced_registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("traced", traced))
        .unwrap();
    registry
}

/// Records order `order_id` inside a request span that continues [`TRACE`].
async fn record_in_request(app: &App, order_id: i64) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let request = tracing::info_span!("request");
    let remote = SpanContext::new(
        TraceId::from_hex(TRACE).unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    request
        .set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
        .unwrap();
    async {
        assert_eq!(current_trace(), TRACE);
        app.session()
            .unit_of_work(async |tx| tx.record(OrderPlaced { order_id }))
            .await
            .unwrap();
    }
    .instrument(request)
    .await;
}

async fn traces(db: &Database) -> Vec<(i64, String)> {
    let mut conn = db.acquire().await.unwrap();
    sqlx::query_as("SELECT order_id, trace FROM traces ORDER BY order_id")
        .fetch_all(&mut *conn)
        .await
        .unwrap()
}

async fn fast_path_continues_the_trace(db: Database) {
    test_subscriber();
    db.execute_script("CREATE TABLE traces (order_id BIGINT, trace TEXT)")
        .await
        .unwrap();
    let app = App::builder(db.clone(), traced_registry()).start();
    record_in_request(&app, 1).await;
    // Outside any request: a trace of its own, nothing carried over.
    app.session()
        .unit_of_work(async |tx| tx.record(OrderPlaced { order_id: 2 }))
        .await
        .unwrap();
    assert!(
        app.wait_until_delivered(Duration::from_secs(10))
            .await
            .unwrap()
    );
    let seen = traces(&db).await;
    assert_eq!(seen[0], (1, TRACE.to_owned()));
    assert_eq!(seen[1].0, 2);
    assert_ne!(seen[1].1, TRACE);
    app.shutdown().await.unwrap();
}

const CHILD_URL: &str = "KEEL_TEST_TRACE_CHILD_URL";

/// Another process's relay delivers what this one recorded without delivering it.
async fn a_relay_of_another_process_continues_the_trace(test_url: String, db: Database) {
    test_subscriber();
    db.execute_script("CREATE TABLE traces (order_id BIGINT, trace TEXT)")
        .await
        .unwrap();
    // Relays record their subscriptions: the child's, before this process records.
    let producer = App::builder(db.clone(), traced_registry())
        .delivery(DeliveryOptions::default().fast_path(false))
        .relay(false)
        .start();
    let (_, path) = module_path!().split_once("::").unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            &format!("{path}::relay_child"),
            "--test-threads=1",
        ])
        .env(CHILD_URL, &test_url)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The child's relay records its subscription; then the event gets a delivery for it.
    for _ in 0..200 {
        if !Admin::new(db.clone())
            .subscriptions()
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    record_in_request(&producer, 1).await;
    assert!(child.wait().unwrap().success(), "the child relay failed");
    assert_eq!(traces(&db).await, vec![(1, TRACE.to_owned())]);
    producer.shutdown().await.unwrap();
}

/// The child process of [`a_relay_of_another_process_continues_the_trace`]: a relay that
/// delivers one event, then stops.
#[tokio::test(flavor = "current_thread")]
#[ignore = "the child process of a_relay_of_another_process_continues_the_trace"]
async fn relay_child() {
    test_subscriber();
    let url = std::env::var(CHILD_URL).expect("started by the parent test");
    let db = Database::connect(&url).await.unwrap();
    let app = App::builder(db.clone(), traced_registry())
        .delivery(DeliveryOptions::default().poll_interval(Duration::from_millis(20)))
        .start();
    for _ in 0..400 {
        if !traces(&db).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn fast_path() {
    if let Some(test) = keel_testing::TestDatabase::<super::B>::new().await {
        fast_path_continues_the_trace(test.database().clone()).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn other_process() {
    if let Some(test) = keel_testing::TestDatabase::<super::B>::new().await {
        a_relay_of_another_process_continues_the_trace(
            test.url().to_owned(),
            test.database().clone(),
        )
        .await;
    }
}
