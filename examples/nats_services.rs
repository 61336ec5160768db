//! Two services that share no database exchange events through NATS JetStream.
//!
//! `orders` places orders: each placement is a unit of work on the orders database that
//! records `OrderPlaced`; a forwarder publishes the committed events to JetStream.
//! `billing` (two instances, sharing its consumers) accepts them into its own database and
//! charges each order once, in its own unit of work.
//!
//! ```text
//! nats-server -js &                                   # a JetStream server on 4222
//! cargo run --example nats_services --features nats   # NATS_URL to use another one
//! ```
//!
//! Both services use SQLite files in the temporary directory, so nothing else is needed.

use std::time::{Duration, Instant};

use keel::nats::{ConsumerOptions, Consumers, Forwarder, JetStream, StreamOptions};
use keel::sqlite::{App, Database, Handler, HandlerContext, Registry};
use keel::{DomainEvent, Error, sqlx};
use serde::{Deserialize, Serialize};

const ORDERS: i64 = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    cents: i64,
}

impl DomainEvent for OrderPlaced {
    const NAME: &'static str = "example.order_placed.v1";
    const AGGREGATE_TYPE: &'static str = "Order";
    fn aggregate_id(&self) -> String {
        self.order_id.to_string()
    }
}

/// Billing's handler: one charge per order, written in the handler's unit of work (which
/// also marks the delivery done, so a redelivered event charges nothing twice).
async fn charge(event: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    let (order_id, cents) = (event.order_id, event.cents);
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO charges (order_id, cents) VALUES ($1, $2)")
            .bind(order_id)
            .bind(cents)
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

/// A fresh SQLite database in the temporary directory, migrated, with `schema`.
async fn database(
    name: &str,
    schema: &'static str,
) -> Result<Database, Box<dyn std::error::Error>> {
    let file = std::env::temp_dir().join(format!("keel-nats-{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    let db = Database::connect(&format!("sqlite:{}", file.display())).await?;
    db.migrate().await?;
    db.execute_script(schema).await?;
    Ok(db)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    // A stream of this run's own, so that runs do not see each other's events.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let options = StreamOptions::default()
        .name(format!("EXAMPLE{run}"))
        .prefix(format!("example{run}"));
    let jetstream = JetStream::connect(&url, options.clone())
        .await
        .map_err(|e| format!("{e} (is a JetStream server running? `nats-server -js`)"))?;

    // orders: its events are forwarded.
    let orders_db = database(
        "orders",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, cents BIGINT NOT NULL)",
    )
    .await?;
    let mut registry = Registry::new();
    let forwarder = Forwarder::new(jetstream.clone());
    registry.register(forwarder.handler::<keel::sqlx::Sqlite, OrderPlaced>())?;
    let orders = App::new(orders_db, registry);

    // billing, two instances on one database: they share the consumer `billing_charge`.
    let billing_db = database(
        "billing",
        "CREATE TABLE charges (order_id BIGINT NOT NULL, cents BIGINT NOT NULL)",
    )
    .await?;
    let mut instances = Vec::new();
    for _ in 0..2 {
        let mut registry = Registry::new();
        registry.register(Handler::new::<OrderPlaced, _>("charge", charge))?;
        let app = App::new(billing_db.connect_again().await?, registry);
        let consumers = Consumers::start(
            app.dispatcher(),
            jetstream.clone(),
            ConsumerOptions::new("billing"),
            &["charge"],
        )?;
        instances.push((app, consumers));
    }

    let started = Instant::now();
    for order_id in 1..=ORDERS {
        let cents = 100 * order_id;
        orders
            .session()
            .unit_of_work(async |tx| {
                sqlx::query("INSERT INTO orders (id, cents) VALUES ($1, $2)")
                    .bind(order_id)
                    .bind(cents)
                    .execute(tx.conn())
                    .await?;
                tx.record(OrderPlaced { order_id, cents })?;
                Ok(())
            })
            .await?;
    }
    println!("orders: {ORDERS} orders placed, their events forwarded to JetStream");

    let mut conn = billing_db.acquire().await?;
    let (charged, total) = loop {
        let (charged, total): (i64, Option<i64>) =
            sqlx::query_as("SELECT COUNT(*), SUM(cents) FROM charges")
                .fetch_one(&mut *conn)
                .await?;
        if charged >= ORDERS || started.elapsed() > Duration::from_secs(60) {
            break (charged, total.unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(conn);
    println!(
        "billing: {charged} charges for {:.2} in {} ms, across two instances",
        total as f64 / 100.0,
        started.elapsed().as_millis()
    );
    let expected: i64 = (1..=ORDERS).map(|id| 100 * id).sum();
    if charged != ORDERS || total != expected {
        return Err(format!("expected {ORDERS} charges for {expected} cents").into());
    }
    println!("each order charged once");

    for (app, consumers) in instances {
        consumers.shutdown().await;
        app.shutdown().await?;
    }
    orders.shutdown().await?;
    Ok(())
}
