//! The HTTP adapter (axum): the same use case behind `POST /assessments/{id}/completion`,
//! for any backend `B`.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel::{App, Error};
use serde_json::json;

use crate::domain::{AlreadyCompleted, AssessmentId, AssessmentNotFound, NotCompletable};
use crate::ports::Store;
use crate::use_cases::complete_assessment;

/// The routes of the service.
pub fn router<B: Store>(app: App<B>) -> axum::Router {
    axum::Router::new()
        .route("/assessments/{id}/completion", post(complete::<B>))
        .route("/assessments/{id}", get(show::<B>))
        .with_state(app)
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
