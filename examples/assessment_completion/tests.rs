//! The flagship's tests, on PostgreSQL and SQLite, against the real database and, for the
//! HTTP adapter, a real server on a loopback port driven by a real client.
//!
//! Each test is written once, generic over the backend, and run on both by the modules at
//! the end (`tests::postgres::…::test`, `tests::sqlite::…::test`).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use keel::{App, Database};

use crate::domain::{
    AlreadyCompleted, Assessment, AssessmentId, AssessmentResult, AssessmentState,
    BadgeAcquisition, ParticipationStatus, ResultStatus,
};
use crate::infrastructure::partner::{self, StubLog};
use crate::infrastructure::{Schema, seed_demo_data};
use crate::ports::Report;
use crate::service_tests::{a_restart_keeps_the_data, the_http_bounds_answer_json};
use crate::use_cases::complete_assessment;

/// One partner stub for the whole test binary, on a runtime of its own (each test has its
/// own runtime, which ends with the test).
pub fn stub() -> &'static (SocketAddr, Arc<StubLog>) {
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
        partner::use_quick_retries();
        started
    })
}

/// The service's bounds in tests.
pub const LIMITS: crate::http::Limits = crate::http::Limits {
    request_timeout: Duration::from_secs(3),
    shutdown_timeout: Duration::from_secs(5),
};

/// The test database (Keel's tables migrated) with the example's tables and seed data.
/// What [`serve`] gives back: the base URL, the sender that stops the server, its task.
pub(crate) type Served = (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), Box<dyn std::error::Error + Send + Sync>>>,
);

/// Serves `app`'s HTTP adapter on a free local port, with the test limits, until the
/// returned sender fires.
pub(crate) async fn serve<B: Schema>(app: App<B>) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
    (base, stop, server)
}

async fn app<B: Schema>(db: &Database<B>) -> App<B> {
    stub();
    db.run_migrations(B::migrations()).await.unwrap();
    db.run_migrations(B::migrations()).await.unwrap(); // idempotent
    assert!(seed_demo_data(db).await.unwrap());
    assert!(!seed_demo_data(db).await.unwrap()); // never twice
    crate::start(db.clone()).unwrap()
}

async fn report<B: Schema>(db: &Database<B>) -> Report {
    B::report(&mut *db.acquire().await.unwrap()).await.unwrap()
}

async fn assessment<B: Schema>(db: &Database<B>, id: i64) -> Assessment {
    let mut conn = db.acquire().await.unwrap();
    B::assessment(&mut conn, AssessmentId(id))
        .await
        .unwrap()
        .unwrap()
}

/// A failure in any must-succeed-together step leaves no trace of the others.
async fn a_failed_step_leaves_no_trace<B: Schema>(db: Database<B>) {
    let app = app(&db).await;
    let mut conn = db.acquire().await.unwrap();
    // Badge save fails: user 7 already holds BRONZE through another participation.
    let held = BadgeAcquisition {
        badge_id: 1,
        user_id: 7,
        campaign_participation_id: 99,
    };
    B::add_badge_acquisitions(&mut conn, &[held]).await.unwrap();
    // Scoring's save fails: a result already exists for assessment 2.
    let old = AssessmentResult {
        assessment_id: 2,
        emitter: "OLD",
        pix_score: 0,
        status: ResultStatus::Rejected,
        reproducibility_rate: 0,
        competence_marks: Vec::new(),
    };
    B::add_result(&mut conn, &old).await.unwrap();
    drop(conn);

    for id in [1, 2] {
        let failed = complete_assessment(&mut app.session(), AssessmentId(id)).await;
        assert!(failed.is_err(), "assessment {id}");
        assert_eq!(assessment(&db, id).await.state, AssessmentState::Started);
        assert_eq!(assessment(&db, id).await.version.get(), 1);
    }
    let after = report(&db).await;
    // The participation moved to "to share" before the badges failed: rolled back too.
    let statuses: Vec<_> = after.participations.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [ParticipationStatus::Started; 2]);
    assert_eq!(after.acquired_badges, [("BRONZE".to_owned(), 7)]);
    assert_eq!(after.courses, [(20, None)]);
    assert_eq!(after.results.len(), 1);
    assert_eq!(after.results[0].competence_marks, 0);

    // Nothing was recorded, so nothing was delivered.
    assert!(
        app.wait_until_delivered(Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert_eq!(report(&db).await.events, 0);
    app.shutdown().await.unwrap();
}

/// A code the program does not know cannot even be stored: PostgreSQL's enum types and
/// SQLite's `CHECK`s refuse it.
async fn the_schema_refuses_an_unknown_code<B: Schema>(db: Database<B>) {
    let app = app(&db).await;
    for statement in [
        "UPDATE campaign_participations SET status = 'Archived' WHERE id = 11",
        "UPDATE assessments SET state = 'Paused' WHERE id = 4",
        "UPDATE assessments SET kind = 'campaign' WHERE id = 4",
    ] {
        let refused = db.execute_script(statement).await;
        assert!(refused.is_err(), "{statement}");
    }
    let mut conn = db.acquire().await.unwrap();
    let row = B::participation(&mut conn, 11).await.unwrap();
    assert_eq!(row.status, ParticipationStatus::Started);
    drop(conn);
    app.shutdown().await.unwrap();
}

/// The partner fails twice: the completion is committed, the notification retried, the
/// sending recorded once.
async fn a_failing_partner_is_retried_and_recorded_once<B: Schema>(db: Database<B>) {
    let app = app(&db).await;
    complete_assessment(&mut app.session(), AssessmentId(1))
        .await
        .unwrap();
    assert_eq!(assessment(&db, 1).await.state, AssessmentState::Completed);
    assert!(
        app.wait_until_delivered(Duration::from_secs(30))
            .await
            .unwrap()
    );
    let sendings = report(&db).await.sendings;
    assert_eq!(sendings.len(), 1);
    let sending = &sendings[0];
    assert_eq!(sending.response_code, 200);
    assert_eq!(sending.notification.campaign_participation_id, 10);
    let answers = stub().1.answers(&sending.event_id.to_string());
    assert_eq!(answers, vec![503, 503, 200]);
    assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    app.shutdown().await.unwrap();
}

/// Completing twice is refused; of 50 concurrent completions exactly one commits.
async fn fifty_concurrent_completions_commit_once<B: Schema>(db: Database<B>) {
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
    assert!(
        app.wait_until_delivered(Duration::from_secs(30))
            .await
            .unwrap()
    );
    let after = report(&db).await;
    assert_eq!(after.acquired_badges.len(), 1);
    assert_eq!(after.results.len(), 1);
    assert_eq!(after.results[0].competence_marks, 5);
    assert!(after.courses[0].1.is_some());
    assert_eq!(after.statistics, [(7, 2)]);
    assert_eq!(
        after.partner_certifications,
        [(7, "PARTNER-CLEA".to_owned())]
    );
    app.shutdown().await.unwrap();
}

/// The HTTP adapter, on a real server and a real client.
async fn the_http_service_maps_every_outcome<B: Schema>(db: Database<B>) {
    let (base, stop, server) = serve(app(&db).await).await;
    let client = reqwest::Client::new();
    let post = |path: &str| client.post(format!("{base}{path}")).send();
    let get = |path: &str| client.get(format!("{base}{path}")).send();
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
    let shown = get("/assessments/1").await.unwrap();
    assert_eq!(shown.status(), 200);
    let shown: serde_json::Value = shown.json().await.unwrap();
    assert_eq!(shown["state"], "Completed");
    assert_eq!(shown["version"], 2);
    assert_eq!(get("/assessments/404").await.unwrap().status(), 404);
    let health = get("/health").await.unwrap();
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(
        (&health["database"], &health["relay"]),
        (&"ok".into(), &"running".into())
    );
    crate::telemetry::install_prometheus().unwrap();
    post("/assessments/2/completion").await.unwrap();
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("keel_unit_of_work_attempts_total{name=\"complete_assessment\"}"),
        "{metrics}"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    type B = sqlx::Postgres;
    keel_testing::backend_tests!(
        a_failed_step_leaves_no_trace,
        the_schema_refuses_an_unknown_code,
        a_failing_partner_is_retried_and_recorded_once,
        fifty_concurrent_completions_commit_once,
        the_http_service_maps_every_outcome,
        a_restart_keeps_the_data,
        the_http_bounds_answer_json,
    );
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    type B = sqlx::Sqlite;
    keel_testing::backend_tests!(
        a_failed_step_leaves_no_trace,
        the_schema_refuses_an_unknown_code,
        a_failing_partner_is_retried_and_recorded_once,
        fifty_concurrent_completions_commit_once,
        the_http_service_maps_every_outcome,
        a_restart_keeps_the_data,
        the_http_bounds_answer_json,
    );
}
