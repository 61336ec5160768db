//! Opening databases: URLs and unreachable servers, secrets kept out of errors.

use std::time::Duration;

use keel::Error;
use keel::sqlx::{Postgres, Sqlite};

#[tokio::test]
async fn malformed_and_unsupported_urls_are_named_without_their_password() {
    for url in [
        "mysql://app:hunter2@localhost/app",
        "postgres://app:hunter2@localhost:notaport/app",
        "no-scheme-at-all",
        "sqlite::memory:",
    ] {
        let errors = [
            keel::Database::<Postgres>::connect(url).await.unwrap_err(),
            keel::Database::<Sqlite>::connect(url).await.unwrap_err(),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("expected `postgres://"), "{text}");
        }
    }
}

/// Connecting to `url`, which must fail as [`Error::Unreachable`]: the error and its text.
/// The pool retries a refused connection until its acquire timeout: kept short.
async fn unreachable(url: &str) -> (Error, String) {
    let err = keel::DatabaseOptions::new(url)
        .acquire_timeout(Duration::from_millis(500))
        .connect::<Postgres>()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{text}");
    (err, text)
}

#[tokio::test]
async fn an_unreachable_server_is_reported_without_the_password() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let (err, text) = unreachable("postgres://app:hunter2@127.0.0.1:1/app").await;
    assert!(
        text.contains("postgres://app:***@127.0.0.1:1/app"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!format!("{err:?}").contains("hunter2"));
}

/// A server that refuses the connection (no such database) is quoted in its own words,
/// without the line of PostgreSQL's source code that the driver's message appends.
#[tokio::test]
async fn a_database_the_server_refuses_is_named_in_its_words() {
    let Some(test) = keel_testing::TestDatabase::<Postgres>::new().await else {
        return;
    };
    let (base, query) = test.url().split_once('?').unwrap_or((test.url(), ""));
    let server = &base[..base.rfind('/').expect("a database in the URL")];
    let url = format!("{server}/keel_no_such_database?{query}");
    let (_, text) = unreachable(&url).await;
    assert!(
        text.contains("database \"keel_no_such_database\" does not exist"),
        "{text}"
    );
    assert!(!text.contains(" at line "), "{text}");
}

#[tokio::test]
async fn a_url_for_the_other_backend_is_refused_by_name() {
    let err = keel::Database::<Postgres>::connect("sqlite:data/x.db")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("this database is PostgreSQL"), "{err}");
    let err = keel::Database::<Sqlite>::connect("postgres://app:hunter2@h/db")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("this database is SQLite") && !err.contains("hunter2"),
        "{err}"
    );
}
