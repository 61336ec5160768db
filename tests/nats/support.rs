//! The broker, the services and their checks, shared by the tests.

use std::time::Duration;

use keel::nats::{ConsumerOptions, Consumers, Forwarder, JetStream, StreamOptions};
use keel::{DeliveryOptions, DomainEvent, Error, sqlx};
use keel_testing::TestDatabase;
use serde::{Deserialize, Serialize};

use super::{App, B, Database, Handler, HandlerContext, Registry};
use crate::turns::Turn;

/// The event the services exchange.
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

/// The test server, and the test's turn to use it (see [`Turn`]): a test holds it to its end.
#[derive(Debug)]
pub struct Broker {
    jetstream: JetStream,
    _turn: Turn,
}

impl std::ops::Deref for Broker {
    type Target = JetStream;
    fn deref(&self) -> &JetStream {
        &self.jetstream
    }
}

/// A stream of its own for one test (name and subject prefix), on the test server; `None`
/// when no server is configured and none is required.
pub async fn broker() -> Option<Broker> {
    broker_with(|options| options).await
}

/// [`broker`] with its stream's options adjusted by `configure`.
pub async fn broker_with(configure: impl FnOnce(StreamOptions) -> StreamOptions) -> Option<Broker> {
    // The pass with a pool of one connection checks that nothing inside a unit of work
    // needs a second one; nothing here nests, and these tests are the suite's slowest.
    if std::env::var("KEEL_TEST_POOL_SIZE").as_deref() == Ok("1") {
        eprintln!("note: the NATS tests run in the main pass only; skipped with a pool of one");
        return None;
    }
    let url = match std::env::var("KEEL_TEST_NATS_URL") {
        Ok(url) => url,
        Err(_) if std::env::var("KEEL_REQUIRE_NATS").as_deref() == Ok("1") => {
            panic!("KEEL_REQUIRE_NATS=1 but KEEL_TEST_NATS_URL is not set")
        }
        Err(_) => {
            eprintln!("note: KEEL_TEST_NATS_URL is not set; skipping a NATS test");
            return None;
        }
    };
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let options = StreamOptions::default()
        .name(format!("T{unique}"))
        .prefix(format!("t{unique}"))
        .ack_wait(Duration::from_secs(5));
    let turn = Turn::take();
    let jetstream = JetStream::connect(&url, configure(options)).await.unwrap();
    Some(Broker {
        jetstream,
        _turn: turn,
    })
}

/// A fresh database of this backend.
pub async fn database() -> TestDatabase<B> {
    TestDatabase::<B>::new()
        .await
        .expect("the backend's test server is configured")
}

pub async fn effects_table(db: &Database) {
    db.execute_script(
        "CREATE TABLE effects (seq BIGINT NOT NULL, handler TEXT NOT NULL, pid BIGINT NOT NULL)",
    )
    .await
    .unwrap();
}

async fn write_effect(seq: i64, ctx: &mut HandlerContext) -> Result<(), Error> {
    let handler = ctx.handler();
    ctx.unit_of_work(async |tx| {
        sqlx::query("INSERT INTO effects (seq, handler, pid) VALUES ($1, $2, $3)")
            .bind(seq)
            .bind(handler)
            .bind(i64::from(std::process::id()))
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
}

pub async fn effect_a(event: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    write_effect(event.seq, ctx).await
}

pub async fn effect_b(event: &Ticked, ctx: &mut HandlerContext) -> Result<(), Error> {
    write_effect(event.seq, ctx).await
}

pub fn quick() -> DeliveryOptions {
    DeliveryOptions::default().poll_interval(Duration::from_millis(20))
}

/// The producing service: its events are forwarded to the broker.
pub fn producer(db: &Database, broker: &JetStream) -> App {
    producer_with(db, broker, quick())
}

/// [`producer`] with these delivery options.
pub fn producer_with(db: &Database, broker: &JetStream, options: DeliveryOptions) -> App {
    let forwarder = Forwarder::new(broker.clone());
    let mut registry = Registry::new();
    registry.register(forwarder.handler::<B, Ticked>()).unwrap();
    App::builder(db.clone(), registry).delivery(options).start()
}

/// One instance of the consuming service `billing`: handlers `effect_a` and `effect_b`,
/// each fed by its durable consumer.
pub fn consumer(db: &Database, broker: &JetStream) -> (App, Consumers) {
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<Ticked, _>("effect_a", effect_a))
        .unwrap();
    registry
        .register(Handler::new::<Ticked, _>("effect_b", effect_b))
        .unwrap();
    let app = App::builder(db.clone(), registry).delivery(quick()).start();
    let options = ConsumerOptions::new("billing").batch(50);
    let consumers = Consumers::start(
        app.dispatcher(),
        broker.clone(),
        options,
        &["effect_a", "effect_b"],
    )
    .unwrap();
    (app, consumers)
}

pub async fn scalar(db: &Database, sql: &'static str) -> i64 {
    let mut conn = db.acquire().await.unwrap();
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut *conn).await.unwrap();
    n
}

/// Waits until `sql` counts `expected` (at most 60 s); returns the last count.
pub async fn until(db: &Database, sql: &'static str, expected: i64) -> i64 {
    let mut last = 0;
    for _ in 0..600 {
        last = scalar(db, sql).await;
        if last == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// Runs the ignored test `child` of the test module `module` (its `module_path!()`) in a
/// process of its own, with `env` set: a service instance that can be killed.
pub fn spawn_child(module: &str, env: &[(&str, String)]) -> std::process::Child {
    let (_crate_name, path) = module
        .split_once("::")
        .expect("a module inside the test crate");
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--ignored",
            "--exact",
            &format!("{path}::child"),
            "--test-threads=1",
            // A panic's message straight to stderr: captured, libtest would print it on
            // stdout, which is discarded.
            "--nocapture",
        ])
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        // A child that fails says why (panics only: its logs are off).
        .stderr(std::process::Stdio::inherit());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

/// Records event `seq` through `app`.
pub async fn tick(app: &App, seq: i64) {
    app.session()
        .unit_of_work(async |tx| {
            tx.record(Ticked { seq })?;
            Ok(())
        })
        .await
        .unwrap();
}
