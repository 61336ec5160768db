//! The flagship through a database outage: PostgreSQL behind a proxy that is cut and
//! restored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel::Database;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::infrastructure::Schema;
use crate::tests::{LIMITS, stub};

/// A TCP proxy to the database that can be cut (every connection closed, new ones
/// refused) and restored: an outage without stopping the suite's shared server.
struct Proxy {
    address: String,
    open: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(true));
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (open_, links_) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !open_.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let upstream = upstream.clone();
                links_.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy {
            address,
            open,
            links,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// PostgreSQL unreachable: a request gets `503` with `Retry-After` within the request
/// timeout, its body without the driver's text; once the database is back, the next
/// request works.
async fn an_outage_answers_503_then_recovers(db: Database<sqlx::Postgres>, url: String) {
    db.run_migrations(<sqlx::Postgres as Schema>::migrations())
        .await
        .unwrap();
    let mut through = url::Url::parse(&url).unwrap();
    let upstream = format!(
        "{}:{}",
        through.host_str().unwrap(),
        through.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(upstream).await;
    let (host, port) = proxy.address.split_once(':').unwrap();
    through.set_host(Some(host)).unwrap();
    through.set_port(Some(port.parse().unwrap())).unwrap();
    let proxied = keel::DatabaseOptions::new(through.as_str())
        .acquire_timeout(Duration::from_secs(1))
        .connect::<sqlx::Postgres>()
        .await
        .unwrap();
    crate::seed_demo_data(&proxied).await.unwrap();
    stub();
    let (base, stop, server) = crate::tests::serve(crate::start(proxied).unwrap()).await;
    let client = reqwest::Client::new();
    let complete = |id: i64| {
        client
            .post(format!("{base}/assessments/{id}/completion"))
            .send()
    };
    assert_eq!(complete(1).await.unwrap().status(), 201);

    proxy.cut();
    let started = Instant::now();
    let refused = complete(4).await.unwrap();
    assert!(started.elapsed() <= LIMITS.request_timeout + Duration::from_millis(500));
    let status = refused.status();
    let headers = refused.headers().clone();
    let body = refused.text().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    for driver_text in ["sqlx", "pool", "PgDatabaseError", "line", "os error"] {
        assert!(!body.contains(driver_text), "{body}");
    }
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);

    proxy.restore();
    assert_eq!(complete(4).await.unwrap().status(), 201);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_503_then_recovers_postgres() {
    if let Some(test) = keel_testing::TestDatabase::<sqlx::Postgres>::new().await {
        an_outage_answers_503_then_recovers(test.database().clone(), test.url().to_owned()).await;
    }
}
