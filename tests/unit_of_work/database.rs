//! Opening databases: URLs, unreachable servers, migrations, secrets kept out of errors.

use keel::{Database, Error, sqlx};

#[tokio::test]
async fn malformed_and_unsupported_urls_are_named_without_their_password() {
    for url in [
        "mysql://app:hunter2@localhost/app",
        "postgres://app:hunter2@localhost:notaport/app",
        "no-scheme-at-all",
        "sqlite::memory:",
    ] {
        let err = Database::connect(url).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("expected `postgres://"), "{text}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_reported_without_the_password() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let err = Database::connect("postgres://app:hunter2@127.0.0.1:1/app")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{text}");
    assert!(
        text.contains("postgres://app:***@127.0.0.1:1/app"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!format!("{err:?}").contains("hunter2"));
}

async fn migrations_are_idempotent_and_refuse_a_newer_schema(db: Database) {
    db.migrate().await.unwrap();
    db.migrate().await.unwrap();
    {
        let mut conn = db.acquire().await.unwrap();
        sqlx::query(
            "INSERT INTO keel_schema_migrations \
             (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', TRUE, $1, 0)",
        )
        .bind(vec![0_u8; 48])
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    let err = db.migrate().await.unwrap_err();
    assert!(
        matches!(err, Error::SchemaNewerThanLibrary { found: 9999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade"), "{err}");
}

keel_testing::backend_tests!(migrations_are_idempotent_and_refuse_a_newer_schema);
