//! The campaign partner: an HTTP client, and a stub of the partner's endpoint that the
//! example serves on loopback (it fails the first calls of each notification, to show the
//! handler being retried).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use keel::Error;

use crate::domain::PartnerNotification;

static ENDPOINT: OnceLock<String> = OnceLock::new();

/// Where notifications go (set once at start-up).
pub fn configure(base_url: String) {
    let _ = ENDPOINT.set(base_url);
}

/// Notifies the partner, with `key` as the idempotency key; the partner's status code on
/// success, [`Error::External`] (retried) otherwise.
pub async fn notify(key: &str, notification: &PartnerNotification) -> Result<u16, Error> {
    let base = ENDPOINT
        .get()
        .ok_or_else(|| Error::external("the partner endpoint is not configured"))?;
    let response = reqwest::Client::new()
        .post(format!("{base}/notifications"))
        .header("Idempotency-Key", key)
        .json(notification)
        .send()
        .await
        .map_err(Error::external)?;
    let status = response.status();
    if !status.is_success() {
        return Err(Error::external(format!("partner answered {status}")));
    }
    Ok(status.as_u16())
}

/// What the stub received: per idempotency key, the status codes it answered.
#[derive(Debug, Default)]
pub struct StubLog {
    calls: Mutex<HashMap<String, Vec<u16>>>,
}

impl StubLog {
    /// The answers given for `key`, in order.
    pub fn answers(&self, key: &str) -> Vec<u16> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }
}

struct Stub {
    failures_per_key: usize,
    log: Arc<StubLog>,
}

async fn receive(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    Json(_notification): Json<PartnerNotification>,
) -> StatusCode {
    let Some(key) = headers.get("Idempotency-Key").and_then(|k| k.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut calls = stub.log.calls.lock().unwrap_or_else(|e| e.into_inner());
    let answers = calls.entry(key.to_owned()).or_default();
    let status = if answers.len() < stub.failures_per_key {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    answers.push(status.as_u16());
    status
}

/// Serves the partner stub on a free loopback port: each notification is refused
/// `failures_per_key` times (503), then accepted (200).
pub async fn start_stub(failures_per_key: usize) -> std::io::Result<(SocketAddr, Arc<StubLog>)> {
    let log = Arc::new(StubLog::default());
    let stub = Arc::new(Stub {
        failures_per_key,
        log: log.clone(),
    });
    let router = axum::Router::new()
        .route("/notifications", post(receive))
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((address, log))
}
