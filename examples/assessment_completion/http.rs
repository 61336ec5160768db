//! The HTTP adapter (axum): the same use case behind `POST /assessments/{id}/completion`,
//! for any backend `B`; `GET /health` and `GET /metrics` for operators.
//!
//! Every request runs in a span `http_request` that continues the caller's trace
//! (`traceparent`): the events it records carry that trace to their handlers. Keel's
//! errors become statuses in one place ([`error_response`]): rejections are 404, 409 and
//! 422; an unavailable database, or a unit of work that gave up under contention, is `503`
//! with `Retry-After`; anything else is a `500`
//! whose body says nothing of the driver (the details go to the log).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel::{App, Error, RelayHealth};
use serde_json::json;
use tracing::Instrument;

use crate::domain::{AlreadyCompleted, AssessmentId, AssessmentNotFound, NotCompletable};
use crate::ports::Store;
use crate::use_cases::complete_assessment;

/// The bounds of the service.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Past it, a request is answered `503`.
    pub request_timeout: Duration,
    /// On shutdown, how long in-flight requests and deliveries may take.
    pub shutdown_timeout: Duration,
}

/// Bodies larger than this are refused (`413`): no route reads one.
const MAX_BODY: u64 = 16 * 1024;

/// How long a client waits before retrying a `503`.
const RETRY_AFTER_SECONDS: &str = "2";

/// The routes of the service.
pub fn router<B: Store>(app: App<B>, limits: Limits) -> axum::Router {
    axum::Router::new()
        .route("/assessments/{id}/completion", post(complete::<B>))
        .route("/assessments/{id}", get(show::<B>))
        .route("/health", get(health::<B>))
        .route("/metrics", get(metrics))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such route".to_owned()) })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route".to_owned(),
            )
        })
        .layer(axum::middleware::from_fn(move |request, next| {
            bounded(request, next, limits.request_timeout)
        }))
        .with_state(app)
}

fn problem(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn unavailable(message: &str) -> Response {
    let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, message.to_owned());
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

/// The one place where Keel's errors become HTTP answers.
pub fn error_response(error: &Error) -> Response {
    if error.rejection::<AssessmentNotFound>().is_some() {
        problem(StatusCode::NOT_FOUND, error.to_string())
    } else if error.rejection::<AlreadyCompleted>().is_some() {
        problem(StatusCode::CONFLICT, error.to_string())
    } else if error.rejection::<NotCompletable>().is_some() {
        problem(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
    } else if error.is_unavailable() {
        tracing::warn!(%error, "database unavailable");
        unavailable("the database is unavailable; retry later")
    } else if matches!(error, Error::RetriesExhausted { .. }) {
        // Every attempt met contention (a row kept locked, a version kept changing): the
        // same request may succeed in a moment.
        tracing::warn!(%error, "gave up under contention");
        unavailable("the assessment is busy; retry later")
    } else if matches!(error.last_attempt(), Error::CommitOutcomeUnknown { .. }) {
        // Whether it committed is unknown; retrying is safe here: a completion that did
        // commit is refused with 409.
        tracing::warn!(%error, "completion outcome unknown");
        unavailable("the database connection was lost; retry later")
    } else {
        tracing::error!(%error, "request failed");
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the service's log".to_owned(),
        )
    }
}

fn parse(id: &str) -> Result<AssessmentId, Box<Response>> {
    id.parse::<i64>().map(AssessmentId).map_err(|_| {
        let shown: String = id.chars().take(40).collect();
        let more = if id.chars().count() > 40 { "…" } else { "" };
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            format!("`{shown}{more}` is not an assessment id (a whole number)"),
        ))
    })
}

/// Runs the request in its span (continuing the caller's trace), refuses large bodies,
/// and answers `503` past the request timeout.
async fn bounded(request: Request, next: Next, timeout: Duration) -> Response {
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
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|length| length > MAX_BODY) {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("bodies are limited to {MAX_BODY} bytes"),
        );
    }
    match tokio::time::timeout(timeout, next.run(request).instrument(span)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_ms = timeout.as_millis() as u64, "request timed out");
            unavailable("the request timed out; retry later")
        }
    }
}

async fn complete<B: Store>(State(app): State<App<B>>, Path(id): Path<String>) -> Response {
    let id = match parse(&id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match complete_assessment(&mut app.session(), id).await {
        Ok(completion) => (StatusCode::CREATED, Json(completion)).into_response(),
        Err(error) => error_response(&error),
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
        Err(error) => error_response(&error),
    }
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
        Ok(Ok(())) => "ok",
        Ok(Err(error)) => {
            tracing::warn!(%error, "health: the database does not answer");
            "unreachable"
        }
        Err(_) => "no answer within 2 s",
    };
    let relay = match app.dispatcher().relay_health() {
        RelayHealth::Running => "running",
        RelayHealth::Failing => "cannot reach the database",
        RelayHealth::Stopped => "stopped",
        RelayHealth::NotStarted => "not started",
    };
    let healthy = database == "ok" && relay == "running";
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "database": database,
        "relay": relay,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The metrics in Prometheus's text format.
async fn metrics() -> Response {
    match crate::telemetry::prometheus_text() {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        None => problem(StatusCode::NOT_FOUND, "metrics are not enabled".to_owned()),
    }
}

/// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish,
/// and stops the relay (running deliveries finish; claimed ones not started are given
/// back for another instance), all within `limits.shutdown_timeout`.
pub async fn serve<B: Store>(
    app: App<B>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, "serving");
    let (stopping, stopped) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
    let grace = limits.shutdown_timeout;
    let router = router(app.clone(), limits);
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping.send(tokio::time::Instant::now() + grace);
    });
    // One deadline for both: the requests in flight, then the deliveries.
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel(None);
    let cut = async {
        if let Ok(deadline) = stopped.await {
            let _ = deadline_tx.send(Some(deadline));
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        served = server => served?,
        () = cut => tracing::warn!(
            shutdown_timeout_ms = limits.shutdown_timeout.as_millis() as u64,
            "requests still running at the shutdown deadline were cut"
        ),
    }
    let deadline = deadline_rx
        .borrow()
        .unwrap_or_else(|| tokio::time::Instant::now() + limits.shutdown_timeout);
    match tokio::time::timeout_at(deadline, app.shutdown()).await {
        Ok(stopped) => stopped?,
        Err(_) => tracing::warn!(
            "deliveries still running at the shutdown deadline were left to their lease"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit of work that gave up under contention (its rows kept locked, its versions
    /// kept changing) may succeed later: a busy service, not a broken one.
    #[test]
    fn a_unit_of_work_that_gave_up_under_contention_is_503() {
        let gave_up = Error::RetriesExhausted {
            unit_of_work: "complete_assessment",
            attempts: 5,
            last: Box::new(Error::LockTimeout {
                detail: "canceling statement due to lock timeout".to_owned(),
            }),
        };
        let response = error_response(&gave_up);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
}
