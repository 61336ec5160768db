//! Delivering released events: one task per (event, handler), retried per policy.

use std::sync::Arc;

use keel_domain::Envelope;
use keel_orchestrator::{Database, Error, Release, ensure_outside_unit_of_work};
use tokio::sync::watch;
use tracing::Instrument;

use crate::registry::Registry;
use crate::{Handler, HandlerContext, Session};

/// Delivers the events of committed units of work to their handlers.
///
/// Each (event, handler) pair is delivered by its own task: one handler's failure or
/// slowness never holds up another. A failed delivery is retried per the handler's retry
/// policy, then given up with an `error` log; a panicking handler counts as a failure.
/// A rejection ([`Error::Rejected`], including an event that no longer deserializes) is
/// not retried.
///
/// Cheap to clone; clones share the registry and the in-flight count.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    registry: Registry,
    in_flight: watch::Sender<usize>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("handlers", &self.inner.registry.len())
            .field("in_flight", &*self.inner.in_flight.borrow())
            .finish()
    }
}

/// Decrements the in-flight count when a delivery ends, however it ends.
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Dispatcher {
    /// A dispatcher delivering to `registry`'s handlers, whose units of work run on `db`.
    pub fn new(db: Database, registry: Registry) -> Self {
        Dispatcher {
            inner: Arc::new(Inner {
                db,
                registry,
                in_flight: watch::Sender::new(0),
            }),
        }
    }

    /// A session on this dispatcher's database.
    pub fn session(&self) -> Session<'_> {
        Session::new(self)
    }

    /// The database handlers' units of work run on.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The handlers this dispatcher delivers to.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Releases the events of a committed unit of work to their handlers and returns the
    /// unit of work's value. Deliveries run in the background; see [`Dispatcher::wait_idle`].
    ///
    /// Only a [`Committed`](keel_orchestrator::Committed) receipt is accepted. Called from
    /// inside a unit of work (with a receipt smuggled in), it fails at once with
    /// [`Error::InsideUnitOfWork`]: nothing is delivered before the enclosing commit.
    ///
    /// Must be called within a Tokio runtime.
    pub fn dispatch<R: Release>(&self, receipt: R) -> Result<R::Value, Error> {
        ensure_outside_unit_of_work("dispatch events")?;
        let (value, events) = receipt.into_parts();
        for envelope in events {
            let envelope = Arc::new(envelope);
            let handlers = self.inner.registry.handlers_for(&envelope.name);
            if handlers.is_empty() {
                tracing::debug!(event = %envelope.name, id = %envelope.id, "no handler for event");
            }
            for handler in handlers {
                self.inner.in_flight.send_modify(|n| *n += 1);
                let guard = InFlight(self.inner.clone());
                let span = tracing::info_span!(
                    "deliver",
                    handler = handler.name(),
                    event = %envelope.name,
                    event_id = %envelope.id,
                );
                let delivery = deliver(self.clone(), handler.clone(), envelope.clone());
                tokio::spawn(
                    async move {
                        delivery.await;
                        drop(guard);
                    }
                    .instrument(span),
                );
            }
        }
        Ok(value)
    }

    /// The number of deliveries not finished yet.
    pub fn in_flight(&self) -> usize {
        *self.inner.in_flight.borrow()
    }

    /// Waits until no delivery is in flight (including the deliveries of events that
    /// handlers record meanwhile).
    pub async fn wait_idle(&self) {
        let mut watch = self.inner.in_flight.subscribe();
        // The sender lives in `inner`, which `self` keeps alive: this cannot fail.
        let _ = watch.wait_for(|n| *n == 0).await;
    }
}

/// Delivers one event to one handler, retrying per the handler's policy.
async fn deliver(dispatcher: Dispatcher, handler: Arc<Handler>, envelope: Arc<Envelope>) {
    let policy = handler.retry_policy().clone();
    let mut attempt = 1;
    loop {
        let mut ctx = HandlerContext::new(
            dispatcher.clone(),
            envelope.clone(),
            handler.name(),
            attempt,
        );
        let call = handler.erased().clone();
        let event = envelope.clone();
        // A task of its own per attempt: a panicking handler fails this attempt only.
        let outcome = tokio::spawn(async move { call.call(&event, &mut ctx).await }).await;
        // Rejections (including an event that no longer deserializes) are permanent;
        // errors and panics are retried.
        let (error, retryable) = match outcome {
            Ok(Ok(())) => {
                tracing::debug!(attempt, "handled");
                return;
            }
            Ok(Err(error)) => {
                let retryable = !matches!(error, Error::Rejected(_));
                (error.to_string(), retryable)
            }
            Err(join) if join.is_panic() => (
                format!("handler panicked: {}", panic_message(join.into_panic())),
                true,
            ),
            Err(_) => {
                tracing::warn!(attempt, "delivery cancelled (runtime shutting down)");
                return;
            }
        };
        if !retryable || !policy.allows_another_after(attempt) {
            tracing::error!(attempt, %error, "handler failed; giving up on this delivery");
            return;
        }
        let delay = policy.jittered_delay_before(attempt + 1);
        tracing::warn!(
            attempt,
            %error,
            retry_in_ms = delay.as_millis() as u64,
            "handler failed; retrying",
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}
