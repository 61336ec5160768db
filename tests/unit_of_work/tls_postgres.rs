//! TLS to PostgreSQL: `sslmode=require`, as every managed PostgreSQL asks. The README's
//! test command starts its server with a self-signed certificate and sets
//! `KEEL_TEST_POSTGRES_TLS=1`. (The rest of the suite connects without TLS: in a debug
//! build, encrypting every message was a sixth of the suite's CPU.)

use keel::sqlx;
use keel_testing::TestDatabase;

use super::{B, Database};
use keel::postgres::{App, Registry};

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
    let mut url = url::Url::parse(test_db.url()).unwrap();
    let others: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(name, _)| name != "sslmode")
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(others)
        .append_pair("sslmode", "require");
    let db = Database::connect(url.as_str()).await.unwrap();
    let mut conn = db.acquire().await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(ssl, "the connection is encrypted");
    drop(conn);

    // The relay's listener connects on its own, with the pool's options: TLS too.
    let app = App::builder(db.clone(), Registry::new()).start();
    let mut listening = false;
    for _ in 0..100 {
        let mut conn = db.acquire().await.unwrap();
        listening = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = current_database()
                AND a.application_name LIKE 'keel-relay%' AND s.ssl)",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if listening {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.shutdown().await.unwrap();
    assert!(listening, "the relay's listener is connected over TLS");
}
