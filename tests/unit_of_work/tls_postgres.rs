//! TLS to PostgreSQL: `sslmode=require`, as every managed PostgreSQL asks. The README's
//! test command starts its server with a self-signed certificate and sets
//! `KEEL_TEST_POSTGRES_TLS=1`.

use keel::sqlx;
use keel_testing::TestDatabase;

use super::{B, Database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_connects_over_tls() {
    if std::env::var("KEEL_TEST_POSTGRES_TLS").as_deref() != Ok("1") {
        assert!(
            std::env::var("CI").is_err(),
            "KEEL_TEST_POSTGRES_TLS=1 is not set on CI: the test server must offer TLS"
        );
        eprintln!("note: KEEL_TEST_POSTGRES_TLS is not 1; skipping the TLS test");
        return;
    }
    let Some(test_db) = TestDatabase::<B>::new().await else {
        return;
    };
    let url = format!("{}?sslmode=require", test_db.url());
    let db = Database::connect(&url).await.unwrap();
    let mut conn = db.acquire().await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(ssl, "the connection is encrypted");
}
