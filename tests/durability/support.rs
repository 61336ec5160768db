//! The event, handlers and checks shared by the durability tests.

use std::time::Duration;

use keel::{DeliveryOptions, DomainEvent, Error, RetryPolicy, sqlx};
use serde::{Deserialize, Serialize};

use super::{App, Database, Handler, HandlerContext, Registry, Tx};

/// The event of the durability tests: number `seq` of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticked {
    pub seq: i64,
}

impl DomainEvent for Ticked {
    const NAME: &'static str = "test.ticked.v1";
    const AGGREGATE_TYPE: &'static str = "Clock";
    fn aggregate_id(&self) -> String {
        self.seq.to_string()
    }
}

pub async fn schema(db: &Database) {
    db.execute_script(
        "CREATE TABLE progress (id BIGINT PRIMARY KEY, produced BIGINT NOT NULL);
         INSERT INTO progress VALUES (1, 0);
         CREATE TABLE effects (seq BIGINT NOT NULL, handler TEXT NOT NULL, attempt BIGINT NOT NULL);",
    )
    .await
    .unwrap();
}

/// Inserts one effect row.
pub async fn insert_effect(
    tx: &mut Tx<'_>,
    seq: i64,
    handler: &str,
    attempt: i64,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO effects (seq, handler, attempt) VALUES ($1, $2, $3)")
        .bind(seq)
        .bind(handler)
        .bind(attempt)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Writes the handler's effect in its own unit of work (which also marks the delivery).
pub async fn write_effect(seq: i64, ctx: &mut HandlerContext) -> Result<(), Error> {
    let handler = ctx.handler();
    let attempt = i64::from(ctx.attempt());
    ctx.unit_of_work(async |tx| insert_effect(tx, seq, handler, attempt).await)
        .await
}

pub async fn effect_a(event: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    write_effect(event.seq, ctx).await
}

pub async fn effect_b(event: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    write_effect(event.seq, ctx).await
}

/// Retries that outlast a server restart.
pub fn patient() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(100)
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(500))
}

pub fn registry(handlers: Vec<Handler>) -> Registry {
    let mut registry = Registry::new();
    for handler in handlers {
        registry.register(handler).unwrap();
    }
    registry
}

pub fn both_effects() -> Registry {
    registry(vec![
        Handler::new::<Ticked, _>("effect_a", effect_a).retry(patient()),
        Handler::new::<Ticked, _>("effect_b", effect_b).retry(patient()),
    ])
}

pub fn quick() -> DeliveryOptions {
    DeliveryOptions::default().poll_interval(Duration::from_millis(20))
}

pub fn app(db: &Database, registry: Registry) -> App {
    App::builder(db.clone(), registry).delivery(quick()).start()
}

/// Records events up to number `total`, `per_tx` per unit of work, through `db` (with or
/// without routing), resuming from the `progress` row so that a crash never produces a
/// number twice. On PostgreSQL the row is read locked: a killed process's `COMMIT` may
/// still land after the next process has started, and an unlocked read would number the
/// same events again (SQLite's write lock, taken at `BEGIN`, already serializes them).
pub async fn produce(db: &mut Database, total: i64, per_tx: i64) -> Result<(), Error> {
    let read = if super::POSTGRES {
        "SELECT produced FROM progress WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT produced FROM progress WHERE id = 1"
    };
    loop {
        let done = db
            .unit_of_work(async |tx| {
                let (produced,): (i64,) = sqlx::query_as(read).fetch_one(tx.conn()).await?;
                let next = (produced + per_tx).min(total);
                for seq in produced..next {
                    tx.record(Ticked { seq })?;
                }
                sqlx::query("UPDATE progress SET produced = $1 WHERE id = 1")
                    .bind(next)
                    .execute(tx.conn())
                    .await?;
                Ok(next >= total)
            })
            .await?
            .into_value();
        if done {
            return Ok(());
        }
    }
}

pub async fn scalar(db: &Database, sql: &'static str) -> i64 {
    let mut conn = db.acquire().await.unwrap();
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut *conn).await.unwrap();
    n
}

/// Every (seq, handler) effect exists exactly once, for `events` events and `handlers`
/// handlers, and every delivery is done.
pub async fn exactly_once(db: &Database, events: i64, handlers: i64) {
    let doubled = scalar(
        db,
        "SELECT COUNT(*) FROM (SELECT seq, handler FROM effects GROUP BY seq, handler
         HAVING COUNT(*) > 1) d",
    )
    .await;
    assert_eq!(doubled, 0, "some effects happened twice");
    let distinct = scalar(
        db,
        "SELECT COUNT(*) FROM (SELECT DISTINCT seq, handler FROM effects) d",
    )
    .await;
    assert_eq!(distinct, events * handlers, "some effects are missing");
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM keel_deliveries").await,
        0,
        "deliveries left undone"
    );
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM keel_done").await,
        events * handlers
    );
}
