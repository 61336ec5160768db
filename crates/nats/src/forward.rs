//! Forwarding committed events, and commands sent inside units of work, to the broker.
//!
//! A forwarder is a delivery target like any handler: each message it forwards gets its own
//! delivery row, claimed by the relay with its lease, retried with its policy, dead-lettered
//! when that runs out. Its handler publishes the event and returns once the broker has
//! stored it; only then is the delivery marked done. A process that dies between the
//! broker's acknowledgement and the mark publishes the event again when the lease expires:
//! the broker drops it as a duplicate if its duplicate window still remembers the id.
//!
//! A command's forwarder is the command's one handler in this service: the relay claims a
//! key's commands in commit order, one at a time, so its partition receives them in that
//! order.

use std::sync::Arc;
use std::time::Duration;

use keel_dispatcher::{Dispatcher, Handler, HandlerContext};
use keel_domain::{Command, DomainEvent, Envelope};
use keel_orchestrator::{Backend, Error, RetryPolicy};

use crate::transport::Transport;
use crate::wire::{self, Subjects};

/// Builds the handlers that forward events to a broker.
///
/// ```no_run
/// # mod keel { pub use keel_dispatcher::Registry; pub use keel_domain::DomainEvent; pub use keel_orchestrator::Backend; pub use keel_nats as nats; }
/// use keel::Registry;
/// use keel::nats::{Forwarder, JetStream, StreamOptions};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderPlaced { id: i64 }
/// # impl keel::DomainEvent for OrderPlaced { const NAME: &'static str = "order.placed.v1";
/// #   const AGGREGATE_TYPE: &'static str = "Order";
/// #   fn aggregate_id(&self) -> String { self.id.to_string() } }
///
/// async fn registry<B: keel::Backend>() -> Result<Registry<B>, Box<dyn std::error::Error>> {
///     let jetstream = JetStream::connect("nats://127.0.0.1:4222", StreamOptions::default()).await?;
///     let forwarder = Forwarder::new(jetstream);
///     let mut registry = Registry::new();
///     registry.register(forwarder.handler::<B, OrderPlaced>())?;
///     Ok(registry)
/// }
/// ```
pub struct Forwarder<T> {
    transport: Arc<T>,
    retry: RetryPolicy,
}

impl<T> Clone for Forwarder<T> {
    fn clone(&self) -> Self {
        Forwarder {
            transport: self.transport.clone(),
            retry: self.retry.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Forwarder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
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
    /// Forwards to `transport`, on its [subjects](Transport::subjects), with
    /// [`default_retry`].
    pub fn new(transport: T) -> Self {
        Forwarder {
            transport: Arc::new(transport),
            retry: default_retry(),
        }
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

    /// The handler forwarding the events named `event` (for events this process has no
    /// type for), named `forward:<event>`.
    pub fn handler_of<B: Backend>(&self, event: &'static str) -> Handler<B> {
        let forward = self.forward(|subjects, e| subjects.message(&e.name));
        Handler::envelope(
            handler_name(event),
            event,
            move |e: &Envelope, _: &mut HandlerContext<B>| forward(e),
        )
        .retry(self.retry.clone())
    }

    /// The handler forwarding commands of type `C` sent inside this service's units of
    /// work, named `forward:<command name>`: the command's one handler here. An ordered
    /// command goes to its key's partition; the relay forwards a key's commands one at a
    /// time, in commit order.
    pub fn command<B: Backend, C: Command>(&self) -> Handler<B> {
        let forward = self.forward(|subjects, e| subjects.command(e, C::ORDERED));
        Handler::command_envelope(
            handler_name(C::NAME),
            C::NAME,
            move |e: &Envelope, _: &mut HandlerContext<B>| forward(e),
        )
        .retry(self.retry.clone())
    }

    /// Publishes an envelope to the subject `subject` gives it; the error is the handler's.
    fn forward(
        &self,
        subject: fn(&Subjects, &Envelope) -> Result<String, String>,
    ) -> impl Fn(&Envelope) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>
    + Clone
    + Send
    + Sync
    + 'static {
        let transport = self.transport.clone();
        move |envelope: &Envelope| {
            let transport = transport.clone();
            let wire = subject(transport.subjects(), envelope)
                .and_then(|subject| wire::encode(subject, envelope));
            Box::pin(async move {
                // A message that cannot be put on the wire never will: dead at once.
                let wire = wire.map_err(|e| Error::rejected(std::io::Error::other(e)))?;
                transport.publish(wire).await.map_err(Error::external)
            })
        }
    }
}

/// `forward:<message>`. Handler names are `&'static str`: one string per forwarded
/// message, made once when the registry is built.
fn handler_name(message: &str) -> &'static str {
    Box::leak(format!("{HANDLER_PREFIX}{message}").into_boxed_str())
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
