//! The flagship as a service: its configuration, a restart that keeps the data, the small
//! HTTP bounds, and a database outage (PostgreSQL behind a proxy that is cut and restored).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel::Database;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::infrastructure::Schema;
use crate::tests::{LIMITS, stub};

fn config(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from(args.iter().map(|a| (*a).to_owned()), |name| {
        env.get(name).cloned()
    })
}

/// Arguments, environment, and what the error must say.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn a_missing_or_malformed_setting_is_named_in_one_line() {
    let url = ("DATABASE_URL", "sqlite:x.db");
    let cases: &[Case] = &[
        (&["--serve"], &[], "DATABASE_URL is not set"),
        (
            &["--serve"],
            &[url, ("DATABASE_POOL_SIZE", "lots")],
            "DATABASE_POOL_SIZE=`lots`",
        ),
        (
            &["--serve"],
            &[url, ("DATABASE_POOL_SIZE", "0")],
            "DATABASE_POOL_SIZE=`0`",
        ),
        (
            &["--serve"],
            &[url, ("REQUEST_TIMEOUT", "10")],
            "REQUEST_TIMEOUT=`10`",
        ),
        (
            &["--serve"],
            &[url, ("PARTNER_URL", "ftp://p")],
            "PARTNER_URL=`ftp://p`",
        ),
        (
            &["--serve"],
            &[url, ("LISTEN_ADDRESS", "here")],
            "LISTEN_ADDRESS=`here`",
        ),
        (
            &["--serve", "nowhere:x"],
            &[url],
            "--serve ADDRESS=`nowhere:x`",
        ),
        (
            &["--serve"],
            &[url, ("PARTNER_STUB_FAILURE_RATE", "2")],
            "PARTNER_STUB_FAILURE_RATE",
        ),
        (&["--verbose"], &[], "unknown argument `--verbose`"),
    ];
    for (args, env, expected) in cases {
        let error = config(args, env).expect_err(expected);
        assert!(error.contains(expected), "{error} (expected {expected})");
        assert_eq!(error.lines().count(), 1, "{error}");
    }
    let fine = config(
        &["--serve", "127.0.0.1:0", "--seed"],
        &[
            url,
            ("REQUEST_TIMEOUT", "1500ms"),
            ("PARTNER_URL", "https://partner.example/"),
        ],
    )
    .unwrap();
    assert!(fine.serve && fine.seed);
    assert_eq!(fine.request_timeout, Duration::from_millis(1500));
    assert_eq!(fine.partner_url.as_deref(), Some("https://partner.example"));
    // The story needs nothing.
    assert!(!config(&[], &[]).unwrap().serve);
}

/// Runs the service (`crate::serve`, as `--serve --seed` does) on `db` until the returned
/// sender fires; gives its base URL.
async fn run_service<B: Schema>(
    db: &Database<B>,
) -> (String, tokio::sync::oneshot::Sender<()>, JoinHandle<()>) {
    let (partner, _) = *stub();
    let mut config = config(
        &["--serve", "127.0.0.1:0", "--seed"],
        &[("DATABASE_URL", "x")],
    )
    .unwrap();
    config.partner_url = Some(format!("http://{partner}"));
    // A free port, known before the service binds it.
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.listen_address = probe.local_addr().unwrap();
    drop(probe);
    let base = format!("http://{}", config.listen_address);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // A new pool, as a new process has: stopping the service closes its own.
    let db = db.connect_again().await.unwrap();
    let task = tokio::spawn(async move {
        crate::serve(db, &config, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    for _ in 0..100 {
        if reqwest::get(format!("{base}/health")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (base, stop, task)
}

/// Complete, stop, start again: the data is there, the second completion is a 409, and
/// there is one completion event.
pub async fn a_restart_keeps_the_data<B: Schema>(db: Database<B>) {
    db.run_migrations(B::migrations()).await.unwrap();
    let client = reqwest::Client::new();
    let (base, stop, task) = run_service(&db).await;
    let first = client
        .post(format!("{base}/assessments/1/completion"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    stop.send(()).unwrap();
    task.await.unwrap();

    let (base, stop, task) = run_service(&db).await;
    let again = client
        .post(format!("{base}/assessments/1/completion"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let shown: serde_json::Value = client
        .get(format!("{base}/assessments/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["state"], "Completed");
    stop.send(()).unwrap();
    task.await.unwrap();
    let report = B::report(&mut *db.acquire().await.unwrap()).await.unwrap();
    assert_eq!(report.events, 1, "one completion event, not two");
    assert_eq!(report.statistics, [(7, 1)]);
}

/// 404 and 405 answer JSON, a large body is refused, an absurd id is not echoed whole.
pub async fn the_http_bounds_answer_json<B: Schema>(db: Database<B>) {
    db.run_migrations(B::migrations()).await.unwrap();
    let (base, stop, task) = run_service(&db).await;
    let client = reqwest::Client::new();
    let missing = client.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    let wrong = client
        .delete(format!("{base}/assessments/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
    assert!(wrong.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    let long_id = "9".repeat(5000);
    let absurd = client
        .post(format!("{base}/assessments/{long_id}/completion"))
        .send()
        .await
        .unwrap();
    assert_eq!(absurd.status(), 400);
    assert!(absurd.text().await.unwrap().len() < 200);
    // Last: the server answers before reading the body and closes the connection, which
    // a request after it could be sent on before the client sees it closed. Twice the
    // limit, small enough for the socket's buffer (a larger body could still be on its
    // way: a broken pipe).
    let large = client
        .post(format!("{base}/assessments/1/completion"))
        .body(vec![b'x'; 32 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), 413);
    stop.send(()).unwrap();
    task.await.unwrap();
}

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
    let app = crate::start(proxied).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::http::serve(
        app,
        listener,
        async {
            let _ = stopped.await;
        },
        LIMITS,
    ));
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

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_503_then_recovers_postgres() {
    if let Some(test) = keel_testing::TestDatabase::<sqlx::Postgres>::new().await {
        an_outage_answers_503_then_recovers(test.database().clone(), test.url().to_owned()).await;
    }
}
