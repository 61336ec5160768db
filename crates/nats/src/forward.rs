//! Forwarding committed events to the broker.
//!
//! A forwarder is a delivery target like any handler: each event it forwards gets its own
//! delivery row, claimed by the relay with its lease, retried with its policy, dead-lettered
//! when that runs out. Its handler publishes the event and returns once the broker has
//! stored it; only then is the delivery marked done. A process that dies between the
//! broker's acknowledgement and the mark publishes the event again when the lease expires:
//! the broker drops it as a duplicate if its duplicate window still remembers the id.

use std::sync::Arc;
use std::time::Duration;

use keel_dispatcher::{Dispatcher, Handler, HandlerContext};
use keel_domain::{DomainEvent, Envelope};
use keel_orchestrator::{Backend, Error, RetryPolicy};

use crate::transport::Transport;
use crate::wire;

/// Builds the handlers that forward events to a broker.
///
/// ```no_run
/// use keel_dispatcher::Registry;
/// use keel_nats::{Forwarder, JetStream, StreamOptions};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderPlaced { id: i64 }
/// # impl keel_domain::DomainEvent for OrderPlaced { const NAME: &'static str = "order.placed.v1";
/// #   const AGGREGATE_TYPE: &'static str = "Order";
/// #   fn aggregate_id(&self) -> String { self.id.to_string() } }
///
/// async fn registry<B: keel_orchestrator::Backend>() -> Result<Registry<B>, Box<dyn std::error::Error>> {
///     let jetstream = JetStream::connect("nats://127.0.0.1:4222", StreamOptions::default()).await?;
///     let forwarder = Forwarder::new(jetstream);
///     let mut registry = Registry::new();
///     registry.register(forwarder.handler::<B, OrderPlaced>())?;
///     Ok(registry)
/// }
/// ```
pub struct Forwarder<T> {
    transport: Arc<T>,
    prefix: Arc<str>,
    retry: RetryPolicy,
}

impl<T> Clone for Forwarder<T> {
    fn clone(&self) -> Self {
        Forwarder {
            transport: self.transport.clone(),
            prefix: self.prefix.clone(),
            retry: self.retry.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Forwarder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("prefix", &self.prefix)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The retry policy of forwarding: a broker outage of minutes is ridden out before an
/// event waits in the dead letter (30 attempts, 200 ms doubling up to 30 s: about 12
/// minutes).
pub fn default_retry() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(30)
        .base_delay(Duration::from_millis(200))
        .max_delay(Duration::from_secs(30))
}

impl<T: Transport> Forwarder<T> {
    /// Forwards to `transport`, under the subject prefix `keel` and with
    /// [`default_retry`].
    pub fn new(transport: T) -> Self {
        Forwarder {
            transport: Arc::new(transport),
            prefix: Arc::from("keel"),
            retry: default_retry(),
        }
    }

    /// The first token of the subjects (default `keel`; the stream must capture
    /// `<prefix>.>`, as [`JetStream`](crate::JetStream) sets up).
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// How failed publishes are retried.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The handler forwarding events of type `E`, named `forward:<event name>`.
    pub fn handler<B: Backend, E: DomainEvent>(&self) -> Handler<B> {
        self.handler_of::<B>(E::NAME)
    }

    /// The handler forwarding the messages named `message` (for messages this process has
    /// no type for), named `forward:<message>`.
    pub fn handler_of<B: Backend>(&self, message: &'static str) -> Handler<B> {
        // Handler names are `&'static str`: one string per forwarded message, made once
        // when the registry is built.
        let name: &'static str = Box::leak(format!("{HANDLER_PREFIX}{message}").into_boxed_str());
        let forwarder = self.clone();
        Handler::envelope(
            name,
            message,
            move |envelope: &Envelope, _ctx: &mut HandlerContext<B>| {
                let forwarder = forwarder.clone();
                let wire = wire::encode(&forwarder.prefix, envelope);
                async move {
                    // A message that cannot be put on the wire never will: dead at once.
                    let wire = wire.map_err(|e| Error::rejected(std::io::Error::other(e)))?;
                    forwarder
                        .transport
                        .publish(wire)
                        .await
                        .map_err(Error::external)
                }
            },
        )
        .retry(self.retry.clone())
    }
}

/// The prefix of every forwarder's handler name.
pub const HANDLER_PREFIX: &str = "forward:";

/// Publishes again every kept event committed since `since` that a forwarder registered in
/// `dispatcher` forwards, already forwarded or not: after the broker lost data. Returns the
/// deliveries created (the relay publishes them). Consumers accept an event id once, so
/// what they had already received changes nothing; JetStream also drops the copies its
/// duplicate window still remembers.
pub async fn republish<B: Backend>(
    dispatcher: &Dispatcher<B>,
    since: time::OffsetDateTime,
) -> Result<u64, Error> {
    let forwarders: Vec<&'static str> = dispatcher
        .registry()
        .handlers()
        .map(|h| h.name())
        .filter(|name| name.starts_with(HANDLER_PREFIX))
        .collect();
    let mut created = 0;
    for handler in forwarders {
        created += dispatcher.deliver_again(handler, since).await?;
    }
    Ok(created)
}
