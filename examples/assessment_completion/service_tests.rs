//! The flagship as a service: its configuration, a restart that keeps the data, the small
//! HTTP bounds (the database outage is in `outage_tests`).

use std::collections::HashMap;
use std::time::Duration;

use keel::Database;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::infrastructure::Schema;
use crate::tests::stub;

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
