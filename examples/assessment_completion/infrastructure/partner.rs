//! The campaign partner: an HTTP client, its retry policy, and a stub of the partner's
//! endpoint that the example serves on loopback when no `PARTNER_URL` is given (it refuses
//! some calls, to show the handler being retried).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use keel::{Error, RetryPolicy};

use crate::domain::PartnerNotification;

static ENDPOINT: OnceLock<String> = OnceLock::new();
static QUICK_RETRIES: OnceLock<()> = OnceLock::new();

/// How the notification handler retries: [`production_retry_policy`], or within
/// milliseconds after [`use_quick_retries`].
pub fn retry_policy() -> RetryPolicy {
    if QUICK_RETRIES.get().is_some() {
        return RetryPolicy::default()
            .max_attempts(6)
            .base_delay(Duration::from_millis(50));
    }
    production_retry_policy()
}

/// Each delay moved by up to ±20 %, so that notifications failed together do not all come
/// back at the same moment.
const JITTER: f64 = 0.2;

/// An HTTP partner's outage lasts seconds to minutes: 11 attempts (the first and 10
/// retries) from 1 s, doubling, at most 5 minutes apart, cover 13½ minutes on average and
/// at least 11½ with the jitter, before the dead letter (`keel dead list`, then `keel dead
/// retry`).
fn production_retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(11)
        .base_delay(Duration::from_secs(1))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(300))
        .jitter(JITTER)
}

/// The story and the tests, whose stub refuses twice per notification, retry within
/// milliseconds; call before the registry is built.
pub fn use_quick_retries() {
    let _ = QUICK_RETRIES.set(());
}

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
    /// The share of other calls refused at random.
    failure_rate: f64,
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
    let status = if answers.len() < stub.failures_per_key || fastrand::f64() < stub.failure_rate {
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
    serve_stub(failures_per_key, 0.0).await
}

/// Serves the partner stub on a free loopback port, refusing `rate` of the calls (503) at
/// random.
pub async fn start_stub_failing(rate: f64) -> std::io::Result<(SocketAddr, Arc<StubLog>)> {
    serve_stub(0, rate).await
}

async fn serve_stub(
    failures_per_key: usize,
    failure_rate: f64,
) -> std::io::Result<(SocketAddr, Arc<StubLog>)> {
    let log = Arc::new(StubLog::default());
    let stub = Arc::new(Stub {
        failures_per_key,
        failure_rate,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The guide promises that a partner outage of 11 minutes loses nothing, whatever the
    /// jitter draws (each delay is moved before the cap).
    #[test]
    fn the_retries_cover_an_eleven_minute_outage() {
        let policy = production_retry_policy().jitter(0.0);
        let uncapped = policy.clone().max_delay(Duration::ZERO);
        let cap = Duration::from_secs(300);
        let shortest: Duration = (2..=policy.attempts())
            .map(|attempt| {
                uncapped
                    .delay_before(attempt)
                    .mul_f64(1.0 - JITTER)
                    .min(cap)
            })
            .sum();
        let average: Duration = (2..=policy.attempts())
            .map(|attempt| policy.delay_before(attempt))
            .sum();
        assert!(
            shortest >= Duration::from_secs(11 * 60 + 30),
            "the retries may wait only {shortest:?} in all"
        );
        assert!(average >= Duration::from_secs(13 * 60), "{average:?}");
    }
}
