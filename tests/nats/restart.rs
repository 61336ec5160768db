//! The JetStream server killed (SIGKILL) and restarted while events flow: both services
//! recover by themselves, nothing is lost and nothing doubled.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel::nats::{JetStream, StreamOptions};

use super::App;
use super::support::*;

const EVENTS: i64 = 2_000;

/// A nats-server of this test's own, so that it can be killed: on `port`, its store in `dir`.
fn start_server(port: u16, dir: &std::path::Path) -> Child {
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server on the PATH (the README's test command installs it)")
}

async fn until_listening(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not start on port {port}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn tick_all(app: App) {
    for seq in 0..EVENTS {
        tick(&app, seq).await;
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_ride_out_a_broker_restart() {
    let Some(_turn) = broker().await else { return };
    let dir = std::env::temp_dir().join(format!("keel-nats-{}", uuid::Uuid::now_v7().simple()));
    let port = free_port();
    let mut server = start_server(port, &dir);
    until_listening(port).await;
    let url = format!("nats://127.0.0.1:{port}");
    let broker = JetStream::connect(
        &url,
        StreamOptions::default().ack_wait(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let (orders_db, billing_db) = (database().await, database().await);
    let (orders_db, billing_db) = (orders_db.database(), billing_db.database());
    effects_table(billing_db).await;
    let orders = producer(orders_db, &broker);
    let (billing, consumers) = consumer(billing_db, &broker);

    let producing = tokio::spawn(tick_all(orders.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut server = start_server(port, &dir);
    producing.await.unwrap();

    let effects = until(billing_db, "SELECT COUNT(*) FROM effects", EVENTS * 2).await;
    assert_eq!(effects, EVENTS * 2, "effects lost or doubled");
    assert_eq!(
        scalar(
            billing_db,
            "SELECT COUNT(*) FROM (SELECT DISTINCT seq, handler FROM effects) e"
        )
        .await,
        EVENTS * 2
    );
    assert!(
        orders
            .wait_until_delivered(Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(orders.dead_letters().count().await.unwrap(), 0);
    assert_eq!(billing.dead_letters().count().await.unwrap(), 0);
    consumers.shutdown().await;
    orders.shutdown().await.unwrap();
    billing.shutdown().await.unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
