//! Keel's migrations on PostgreSQL say nothing when there is nothing to do.

use keel_testing::TestDatabase;

use super::B;

/// A service migrates at every start. PostgreSQL answers the creation of a migrations table
/// that exists with a notice, which the driver would log at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_an_up_to_date_database_logs_no_server_notice() {
    crate::test_subscriber();
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let db = test_db.database().clone();
    db.migrate().await.unwrap();
    // The capture works: a warning the server sends on this database is seen.
    db.execute_script("DO $$ BEGIN RAISE WARNING 'keel-migrations-probe'; END $$")
        .await
        .unwrap();
    let notices = crate::server_notices();
    assert!(
        notices.iter().any(|n| n.contains("keel-migrations-probe")),
        "the probe's warning was not captured: {notices:?}"
    );
    let about_migrations: Vec<_> = notices
        .iter()
        .filter(|n| n.contains("keel_schema_migrations"))
        .collect();
    assert!(
        about_migrations.is_empty(),
        "the driver logged: {about_migrations:?}"
    );
}
