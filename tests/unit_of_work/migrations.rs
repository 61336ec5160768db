//! Keel's migrations: idempotent, and refusing a schema migrated by a newer Keel.

use keel::{Error, sqlx};

use super::{B, Database};

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
