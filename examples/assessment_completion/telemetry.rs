//! Logs, metrics and traces of the service.
//!
//! - Logs: `RUST_LOG` (default `error` for the story, `info` when serving), printed by
//!   `tracing-subscriber`.
//! - Metrics: Keel and the service record through the `metrics` facade; serving installs a
//!   Prometheus recorder whose text `GET /metrics` returns.
//! - Traces (Keel's `opentelemetry` feature, on by default): an OpenTelemetry layer makes
//!   each request's span continue the caller's `traceparent`, Keel stores that context
//!   with the events the request records, and each handler's span continues it, in this
//!   process or in another one's relay. The layer here has no exporter (its tracer is a
//!   no-op that keeps the caller's trace id); a production service gives it the tracer of
//!   an OTLP exporter instead (see `docs/guide/operations.md`). Keel's per-delivery span is
//!   DEBUG, so the layer is given Keel's DEBUG spans whatever `RUST_LOG` says.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the log output (and the trace layer) for the whole program.
pub fn init(serving: bool) {
    let default = if serving { "info" } else { "error" };
    let logs = tracing_subscriber::fmt::layer()
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()));
    let registry = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "opentelemetry")]
    let registry = registry.with(
        tracing_opentelemetry::layer().with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target("keel_dispatcher", tracing::Level::DEBUG)
                .with_target("keel_orchestrator", tracing::Level::DEBUG),
        ),
    );
    registry.init();
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once); `/metrics` renders it.
pub fn install_prometheus() -> Result<(), String> {
    if PROMETHEUS.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let _ = PROMETHEUS.set(handle);
    Ok(())
}

/// The metrics in Prometheus's text format, if the recorder is installed.
pub fn prometheus_text() -> Option<String> {
    PROMETHEUS.get().map(PrometheusHandle::render)
}

/// Makes `span` continue the trace of the caller's `traceparent` header, if any, and
/// records its trace id in the span's `trace_id` field.
pub fn continue_caller_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let headers = [("traceparent".to_owned(), traceparent.to_owned())].into();
    keel::trace::continue_trace(span, &headers);
}
