//! Traces across the outbox: the W3C trace context of the span that records an event (or
//! sends a command) is stored with it as the `traceparent` (and `tracestate`) header, and
//! the span that delivers it continues that trace, in this process, in a relay of another
//! process after a restart, or in another service across a broker.
//!
//! The context is read from and given to `tracing` spans through `tracing-opentelemetry`
//! (feature `opentelemetry`, on by default): an application that exports its spans with
//! OpenTelemetry sees one trace from the HTTP request to every handler. Without an
//! OpenTelemetry layer, or with the feature off, nothing is captured and an application
//! can still set `traceparent` itself ([`Tx::header`](crate::Tx::header)).

use std::collections::BTreeMap;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor trace state header.
pub const TRACESTATE: &str = "tracestate";

/// Stores the current span's trace context in `headers`, unless they already hold one.
#[cfg(feature = "opentelemetry")]
pub(crate) fn capture(headers: &mut BTreeMap<String, String>) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if headers.contains_key(TRACEPARENT) {
        return;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span = span.span_context();
    if !span.is_valid() {
        return;
    }
    headers.insert(
        TRACEPARENT.to_owned(),
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        ),
    );
    let state = span.trace_state().header();
    if !state.is_empty() {
        headers.insert(TRACESTATE.to_owned(), state);
    }
}

/// Without the `opentelemetry` feature, nothing is captured.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn capture(_headers: &mut BTreeMap<String, String>) {}

/// Makes `span` (not yet entered) continue the trace whose context `headers` hold, if any,
/// and records its id in the span's `trace_id` field (when it has one), so that logs show
/// it. A malformed `traceparent` is ignored: the span starts a trace of its own.
#[cfg(feature = "opentelemetry")]
pub fn continue_trace(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    use std::str::FromStr;

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some(parent) = headers.get(TRACEPARENT) else {
        return;
    };
    let parts: Vec<&str> = parent.trim().split('-').collect();
    let [version, trace_id, span_id, flags] = parts[..] else {
        return;
    };
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return;
    }
    let (Ok(trace_id), Ok(span_id), Ok(flags)) = (
        TraceId::from_hex(trace_id),
        SpanId::from_hex(span_id),
        u8::from_str_radix(flags, 16),
    ) else {
        return;
    };
    if version != "00" || trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return;
    }
    let state = headers
        .get(TRACESTATE)
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    span.record("trace_id", tracing::field::display(trace_id));
    let remote = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// Without the `opentelemetry` feature, spans start traces of their own; the trace id of
/// `traceparent` is still recorded in the span's `trace_id` field.
#[cfg(not(feature = "opentelemetry"))]
pub fn continue_trace(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    if let Some(trace_id) = headers.get(TRACEPARENT).and_then(|p| p.split('-').nth(1)) {
        span.record("trace_id", trace_id);
    }
}
