//! The flagship's tests, on PostgreSQL and SQLite, against the real database and, for the
//! HTTP adapter, a real server on a loopback port driven by a real client.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keel::{App, Database, sqlx};

use crate::domain::{AlreadyCompleted, AssessmentId};
use crate::infrastructure::partner::{self, StubLog};
use crate::use_cases::complete_assessment;

/// One partner stub for the whole test binary, on a runtime of its own (each test has its
/// own runtime, which ends with the test).
fn stub() -> &'static (SocketAddr, Arc<StubLog>) {
    static STUB: OnceLock<(SocketAddr, Arc<StubLog>)> = OnceLock::new();
    STUB.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                let started = partner::start_stub(2).await.expect("stub");
                sender.send(started).expect("send");
                std::future::pending::<()>().await;
            });
        });
        let started = receiver.recv().expect("stub started");
        partner::configure(format!("http://{}", started.0));
        started
    })
}

async fn app(db: &Database) -> App {
    stub();
    crate::infrastructure::schema::reset_with_seed_data(db)
        .await
        .unwrap();
    crate::start(db.clone()).unwrap()
}

async fn scalar(db: &Database, sql: &'static str) -> i64 {
    let mut conn = db.acquire().await.unwrap();
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&mut *conn).await.unwrap();
    n
}

async fn state_of(db: &Database, id: i64) -> String {
    let mut conn = db.acquire().await.unwrap();
    let (state,): (String,) = sqlx::query_as("SELECT state FROM assessments WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    state
}

/// A failure in any must-succeed-together step leaves no trace of the others.
async fn a_failed_step_leaves_no_trace(db: Database) {
    let app = app(&db).await;
    // Badge save fails: user 7 already holds BRONZE through another participation.
    db.execute_script("INSERT INTO badge_acquisitions VALUES (1, 7, 99)")
        .await
        .unwrap();
    assert!(
        complete_assessment(&mut app.session(), AssessmentId(1))
            .await
            .is_err()
    );
    assert_eq!(state_of(&db, 1).await, "Started");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM campaign_participations WHERE status = 'ToShare'"
        )
        .await,
        0
    );

    // Scoring's save fails: a result already exists for assessment 2.
    db.execute_script("INSERT INTO assessment_results VALUES (2, 2, 'OLD', 0, 'rejected', 0)")
        .await
        .unwrap();
    assert!(
        complete_assessment(&mut app.session(), AssessmentId(2))
            .await
            .is_err()
    );
    assert_eq!(state_of(&db, 2).await, "Started");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM certification_courses WHERE completed_at IS NOT NULL"
        )
        .await,
        0
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM competence_marks").await,
        0
    );

    // The participation update fails: its row holds a status the code does not know.
    db.execute_script("UPDATE campaign_participations SET status = 'Archived' WHERE id = 11")
        .await
        .unwrap();
    assert!(
        complete_assessment(&mut app.session(), AssessmentId(4))
            .await
            .is_err()
    );
    assert_eq!(state_of(&db, 4).await, "Started");

    // Nothing was recorded, so nothing was delivered.
    assert!(
        app.wait_until_delivered(Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM keel_events").await, 0);
    app.shutdown().await;
}

/// The partner fails twice: the completion is committed, the notification retried, the
/// sending recorded once.
async fn a_failing_partner_is_retried_and_recorded_once(db: Database) {
    let app = app(&db).await;
    complete_assessment(&mut app.session(), AssessmentId(1))
        .await
        .unwrap();
    assert_eq!(state_of(&db, 1).await, "Completed");
    assert!(
        app.wait_until_delivered(Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM partner_sendings").await,
        1
    );
    let mut conn = db.acquire().await.unwrap();
    let (event_id, code): (String, i64) =
        sqlx::query_as("SELECT event_id, response_code FROM partner_sendings")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    drop(conn);
    assert_eq!(code, 200);
    assert_eq!(stub().1.answers(&event_id), vec![503, 503, 200]);
    assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    app.shutdown().await;
}

/// Completing twice is refused; of 50 concurrent completions exactly one commits.
async fn fifty_concurrent_completions_commit_once(db: Database) {
    let app = app(&db).await;
    for id in [1, 2] {
        let mut requests = Vec::new();
        for _ in 0..50 {
            let app = app.clone();
            requests.push(tokio::spawn(async move {
                complete_assessment(&mut app.session(), AssessmentId(id)).await
            }));
        }
        let mut committed = 0;
        for request in requests {
            match request.await.unwrap() {
                Ok(_) => committed += 1,
                Err(error) => assert!(error.rejection::<AlreadyCompleted>().is_some(), "{error}"),
            }
        }
        assert_eq!(committed, 1, "assessment {id}");
    }
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM badge_acquisitions").await,
        1
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM assessment_results").await,
        1
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM competence_marks").await,
        5
    );
    assert!(
        app.wait_until_delivered(Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT completed_assessments FROM user_statistics WHERE user_id = 7"
        )
        .await,
        2
    );
    app.shutdown().await;
}

/// The HTTP adapter, on a real server and a real client.
async fn the_http_service_maps_every_outcome(db: Database) {
    let app = app(&db).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::http::serve(app, listener, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let post = |path: &str| client.post(format!("{base}{path}")).send();
    let created = post("/assessments/1/completion").await.unwrap();
    assert_eq!(created.status(), 201);
    let body: serde_json::Value = created.json().await.unwrap();
    assert_eq!(body["badges"], serde_json::json!(["BRONZE"]));
    assert_eq!(
        post("/assessments/1/completion").await.unwrap().status(),
        409
    );
    assert_eq!(
        post("/assessments/3/completion").await.unwrap().status(),
        422
    );
    assert_eq!(
        post("/assessments/404/completion").await.unwrap().status(),
        404
    );
    let malformed = post("/assessments/abc/completion").await.unwrap();
    assert_eq!(malformed.status(), 400);
    let problem: serde_json::Value = malformed.json().await.unwrap();
    assert!(problem["error"].as_str().unwrap().contains("`abc`"));
    let shown = client
        .get(format!("{base}/assessments/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200);
    let shown: serde_json::Value = shown.json().await.unwrap();
    assert_eq!(shown["state"], "Completed");
    assert_eq!(
        client
            .get(format!("{base}/assessments/404"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

keel_testing::backend_tests!(
    a_failed_step_leaves_no_trace,
    a_failing_partner_is_retried_and_recorded_once,
    fifty_concurrent_completions_commit_once,
    the_http_service_maps_every_outcome,
);
