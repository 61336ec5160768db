//! Events, handlers and tables shared by the event tests. Handlers write what they see to
//! the test's own database, so each test observes only its own deliveries.

use std::time::Duration;

use keel::{DeliveryOptions, DomainEvent, Error, RetryPolicy, sqlx};
use serde::{Deserialize, Serialize};

use super::{App, Database, Handler, HandlerContext, Registry};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: i64,
}

impl DomainEvent for OrderPlaced {
    const NAME: &'static str = "test.order_placed.v1";
    const AGGREGATE_TYPE: &'static str = "Order";
    fn aggregate_id(&self) -> String {
        self.order_id.to_string()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvoiceIssued {
    pub order_id: i64,
}

impl DomainEvent for InvoiceIssued {
    const NAME: &'static str = "test.invoice_issued.v1";
    const AGGREGATE_TYPE: &'static str = "Invoice";
    fn aggregate_id(&self) -> String {
        self.order_id.to_string()
    }
}

pub async fn schema(db: &Database) {
    db.execute_script(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY);
         CREATE TABLE handled (
             handler TEXT NOT NULL,
             event_id TEXT NOT NULL,
             order_seen BOOLEAN NOT NULL,
             attempt BIGINT NOT NULL,
             correlation_id TEXT NOT NULL,
             causation_id TEXT
         );",
    )
    .await
    .unwrap();
}

/// Writes one `handled` row in the handler's own unit of work; `order_seen` says whether
/// the producer's committed row was visible.
pub async fn note(ctx: &mut HandlerContext, order_id: i64) -> Result<(), Error> {
    let handler = ctx.handler();
    let attempt = i64::from(ctx.attempt());
    let event_id = ctx.event_id().to_string();
    let correlation = ctx.envelope().correlation_id.to_string();
    let causation = ctx.envelope().causation_id.map(|id| id.to_string());
    let (event_id, correlation, causation) = (&event_id, &correlation, &causation);
    ctx.unit_of_work(async |tx| {
        let seen = sqlx::query("SELECT 1 FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_optional(tx.conn())
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO handled (handler, event_id, order_seen, attempt, correlation_id, causation_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(handler)
        .bind(event_id.as_str())
        .bind(seen)
        .bind(attempt)
        .bind(correlation.as_str())
        .bind(causation.clone())
        .execute(tx.conn())
        .await?;
        Ok(())
    })
    .await
}

pub async fn record_order(event: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    note(ctx, event.order_id).await
}

pub fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(attempts)
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
}

/// An app with exactly these handlers and a relay that polls often.
pub fn app_with(db: Database, handlers: Vec<Handler>) -> App {
    let mut registry = Registry::new();
    for handler in handlers {
        registry.register(handler).unwrap();
    }
    App::builder(db, registry)
        .delivery(DeliveryOptions::default().poll_interval(Duration::from_millis(20)))
        .start()
}

/// Commits one unit of work recording `OrderPlaced` for each of `order_ids` on `other` (a
/// pool of another process: no fast path), and wakes `app`'s relay for it (a notification
/// does on PostgreSQL; SQLite relays poll, so the test wakes it).
pub async fn commit_elsewhere(
    app: &App,
    other: &mut Database,
    order_ids: std::ops::Range<i64>,
) -> keel::Committed<()> {
    let committed = other
        .unit_of_work(async |tx| {
            for order_id in order_ids.clone() {
                tx.record(OrderPlaced { order_id })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    if !super::POSTGRES {
        app.dispatcher().wake_relay();
    }
    committed
}

/// Waits until every delivery is done or dead.
pub async fn delivered(app: &App) {
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap(),
        "deliveries still pending after 20 s"
    );
}

/// Failed attempts recorded for `handler`.
pub async fn failures(db: &Database, handler: &str) -> i64 {
    let mut conn = db.acquire().await.unwrap();
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM keel_delivery_errors WHERE handler = $1")
            .bind(handler)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    n
}

pub async fn count(db: &Database, sql: &'static str) -> i64 {
    let mut conn = db.acquire().await.unwrap();
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut *conn).await.unwrap();
    n
}
