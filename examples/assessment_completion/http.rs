//! The HTTP adapter (axum): the same use case behind `POST /assessments/{id}/completion`,
//! for any backend `B`; `GET /health` and `GET /metrics` for operators.
//!
//! Every request runs in a span `http_request` that continues the caller's trace
//! (`traceparent`): the events it records carry that trace to their handlers.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel::{App, Error, RelayHealth};
use serde_json::json;
use tracing::Instrument;

use crate::domain::{AlreadyCompleted, AssessmentId, AssessmentNotFound, NotCompletable};
use crate::ports::Store;
use crate::use_cases::complete_assessment;

/// The routes of the service.
pub fn router<B: Store>(app: App<B>) -> axum::Router {
    axum::Router::new()
        .route("/assessments/{id}/completion", post(complete::<B>))
        .route("/assessments/{id}", get(show::<B>))
        .route("/health", get(health::<B>))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(traced))
        .with_state(app)
}

/// Runs the request in its span, continuing the caller's trace.
async fn traced(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok());
    crate::telemetry::continue_caller_trace(&span, traceparent);
    next.run(request).instrument(span).await
}

/// `200` when the database answers and this process's relay runs and reaches it; `503`
/// otherwise, with what is wrong.
async fn health<B: Store>(State(app): State<App<B>>) -> Response {
    let database = async {
        let mut conn = app.session().acquire().await?;
        sqlx::Connection::ping(&mut *conn).await?;
        Ok::<_, Error>(())
    };
    let database = match tokio::time::timeout(Duration::from_secs(2), database).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "health: the database does not answer");
            "unreachable".to_owned()
        }
        Err(_) => "no answer within 2 s".to_owned(),
    };
    let relay = match app.dispatcher().relay_health() {
        RelayHealth::Running => "running",
        RelayHealth::Failing => "cannot reach the database",
        RelayHealth::Stopped => "stopped",
        RelayHealth::NotStarted => "not started",
    };
    let healthy = database == "ok" && relay == "running";
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if healthy { "ok" } else { "unavailable" }, "database": database, "relay": relay });
    (status, Json(body)).into_response()
}

/// The metrics in Prometheus's text format.
async fn metrics() -> Response {
    match crate::telemetry::prometheus_text() {
        Some(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            text,
        )
            .into_response(),
        None => problem(StatusCode::NOT_FOUND, "metrics are not enabled".to_owned()),
    }
}

fn problem(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn parse(id: &str) -> Result<AssessmentId, Box<Response>> {
    id.parse::<i64>().map(AssessmentId).map_err(|_| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not an assessment id (a whole number)"),
        ))
    })
}

fn status_of(error: &Error) -> StatusCode {
    if error.rejection::<AssessmentNotFound>().is_some() {
        StatusCode::NOT_FOUND
    } else if error.rejection::<AlreadyCompleted>().is_some() {
        StatusCode::CONFLICT
    } else if error.rejection::<NotCompletable>().is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

async fn complete<B: Store>(State(app): State<App<B>>, Path(id): Path<String>) -> Response {
    let id = match parse(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match complete_assessment(&mut app.session(), id).await {
        Ok(completion) => (StatusCode::CREATED, Json(completion)).into_response(),
        Err(error) => {
            let status = status_of(&error);
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(%error, "completion failed");
            }
            problem(status, error.to_string())
        }
    }
}

async fn show<B: Store>(State(app): State<App<B>>, Path(id): Path<String>) -> Response {
    let id = match parse(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let found = async {
        let mut conn = app.session().acquire().await?;
        B::assessment(&mut conn, id).await
    }
    .await;
    match found {
        Ok(Some(a)) => Json(json!({
            "id": id.0, "user_id": a.user_id, "kind": a.kind, "state": a.state,
            "version": a.version.get(),
        }))
        .into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("assessment {id} not found")),
        Err(error) => problem(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// Serves until `shutdown` resolves, then stops the relay (finishing running deliveries).
pub async fn serve<B: Store>(
    app: App<B>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, "serving");
    axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    app.shutdown().await?;
    Ok(())
}
