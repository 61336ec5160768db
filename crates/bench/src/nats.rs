//! `nats`: commit → handler start in another service, through NATS JetStream; then
//! scale-out across consumer processes ([`scale_out`](crate::scale_out)).
//!
//! The producing service (one database) forwards each committed event with its fast path;
//! the consuming service (a second database on the same server) accepts it into its outbox
//! and its relay runs the handler. Both run in this process, so one clock measures the
//! whole path: forward, publish acknowledged, consumer, accept (one local commit), relay,
//! handler. A throwaway `nats-server -js` is started on a free port and stopped after.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel::nats::{ConsumerOptions, Consumers, Forwarder, JetStream, StreamOptions};
use keel::postgres::{App, Registry};
use keel::sqlx;

use crate::Report;
use crate::common::{self, Touched};
use crate::latency;
use crate::uow::verdict;

/// A JetStream server of the benchmark's own; killed when dropped.
pub(crate) struct Server {
    child: Child,
    dir: std::path::PathBuf,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `nats-server -js` on a free port with a store directory of its own.
pub(crate) async fn start_server() -> Result<Server, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = std::env::temp_dir().join(format!("keel-bench-nats-{port}"));
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting nats-server (apt-get install nats-server): {e}"))?;
    let server = Server {
        child,
        dir,
        url: format!("nats://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("nats-server did not start".to_owned())
}

/// The URL of a second, fresh database on the server of `url`.
pub(crate) async fn second_database(url: &str) -> Result<String, String> {
    let pool = common::raw_pool(url, 1).await?;
    for statement in [
        "DROP DATABASE IF EXISTS keel_bench_consumer",
        "CREATE DATABASE keel_bench_consumer",
    ] {
        sqlx::raw_sql(statement)
            .execute(&pool)
            .await
            .map_err(|e| format!("{statement}: {e}"))?;
    }
    let (base, _) = url
        .rsplit_once('/')
        .ok_or("the database URL has no database name")?;
    Ok(format!("{base}/keel_bench_consumer"))
}

pub async fn run(url: &str, n: u64) -> Result<Report, String> {
    let server = start_server().await?;
    let pool = common::raw_pool(url, 2).await?;
    common::reset(&pool).await?;
    let consumer_url = second_database(url).await?;

    let jetstream = JetStream::connect(&server.url, StreamOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut registry = Registry::new();
    registry
        .register(Forwarder::new(jetstream.clone()).handler::<sqlx::Postgres, Touched>())
        .map_err(|e| e.to_string())?;
    let producer = App::builder(common::keel_database(url, 8).await?, registry).start();
    let consumer_db = common::keel_database(&consumer_url, 8).await?;
    let consumer: App = App::builder(consumer_db, latency::registry()).start();
    let consumers = Consumers::start(
        consumer.dispatcher(),
        jetstream,
        ConsumerOptions::new("bench"),
        &["latency_probe"],
    )?;
    latency::reset_started();

    let mut committed = HashMap::new();
    for seq in 0..n as i64 {
        let receipt = latency::produce_one(&producer, seq)
            .await
            .map_err(|e| e.to_string())?;
        committed.insert(seq, Instant::now());
        producer
            .dispatcher()
            .dispatch(receipt)
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(latency::PACE).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while latency::started_count() < n as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = latency::take_started();
    consumers.shutdown().await;
    producer.shutdown().await.map_err(|e| e.to_string())?;
    consumer.shutdown().await.map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(n as usize);
    for (seq, at) in committed {
        let (start, _) = started
            .get(&seq)
            .ok_or(format!("event {seq} never reached the other service"))?;
        samples.push(start.saturating_duration_since(at).as_secs_f64() * 1e3);
    }
    let (p50, p99, max) = latency::summary(&mut samples);

    common::heading(&format!(
        "nats: commit → handler start in another service through JetStream, {n} events \
         one at a time every {} ms, PostgreSQL",
        latency::PACE.as_millis()
    ));
    println!(
        "  {:<40} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "  {:<40} {p50:>9.3} {p99:>9.3} {max:>9.3}",
        "forward, accept, relay"
    );
    println!("  goal: p99 ≤ 20 ms → {}", verdict(p99 <= 20.0));

    let mut report = Report::new("nats");
    report.set("p50_ms", p50);
    report.set("p99_ms", p99);
    report.set("max_ms", max);

    let rates = crate::scale_out::run(url, &server.url).await?;
    common::heading(&format!(
        "nats: scale-out, one consuming service in 1, 2 and 4 processes sharing its \
         JetStream consumer and its database; handler waits 5 ms, {} at once per process",
        crate::scale_out::CONCURRENCY
    ));
    println!("  {:<40} {:>9} {:>9}", "", "jobs/s", "vs one");
    let one = rates[0].1;
    for (processes, rate) in &rates {
        println!(
            "  {:<40} {rate:>9.0} {:>8.2}x",
            format!("{processes} process(es)"),
            rate / one
        );
        let key = match processes {
            1 => "scale_1_per_s",
            2 => "scale_2_per_s",
            _ => "scale_4_per_s",
        };
        report.set(key, *rate);
    }
    let four = rates.last().map_or(0.0, |(_, rate)| rate / one);
    println!("  goal: 4 processes ≥ 3.5× one → {}", verdict(four >= 3.5));
    report.set("scale_4_vs_1", four);
    Ok(report)
}
