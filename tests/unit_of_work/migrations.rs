//! Keel's migrations: idempotent, quiet, and refusing a schema migrated by a newer Keel.

use std::sync::{Arc, Mutex};

use keel::{Error, sqlx};
use keel_testing::TestDatabase;
use tracing_subscriber::layer::{Context, SubscriberExt};

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

/// Records the targets of the events it sees.
struct Targets(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Targets {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let target = event.metadata().target().to_owned();
        self.0.lock().unwrap().push(target);
    }
}

/// A service migrates at every start: Keel's migrations say nothing when there is nothing to
/// do (PostgreSQL would otherwise send a notice that its migrations table already exists,
/// which the driver logs at every start).
#[tokio::test]
async fn migrating_an_up_to_date_database_logs_no_server_notice() {
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Targets(seen.clone()));
    let _scope = tracing::subscriber::set_default(subscriber);
    db.migrate().await.unwrap();
    let seen = seen.lock().unwrap();
    let notices: Vec<_> = seen.iter().filter(|t| t.contains("notice")).collect();
    assert!(notices.is_empty(), "the driver logged notices: {notices:?}");
}
