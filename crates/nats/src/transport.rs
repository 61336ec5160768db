//! What Keel needs from a broker, as a small trait: publish durably, and receive for a
//! durable, shared consumer with ack and retry-later. JetStream implements it
//! ([`JetStream`](crate::JetStream)); another engine (Kafka) would implement the same two
//! calls.

use std::future::Future;
use std::time::Duration;

use crate::wire::{Subjects, WireMessage};

/// A broker failure, with the broker's own message.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct TransportError {
    context: &'static str,
    message: String,
}

impl TransportError {
    /// An error while doing `context` (e.g. "publishing"), described by `error`.
    pub fn new(context: &'static str, error: impl std::fmt::Display) -> Self {
        TransportError {
            context,
            message: error.to_string(),
        }
    }
}

/// A durable consumer to receive for: every process using the same name shares its
/// messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The consumer's name.
    pub durable: String,
    /// The subject it reads.
    pub subject: String,
    /// One message unacknowledged at a time, whichever process holds it: messages are
    /// then accepted in the subject's order (a partition of ordered commands).
    pub in_order: bool,
}

/// A broker Keel forwards to and consumes from.
pub trait Transport: Send + Sync + 'static {
    /// A received message, to acknowledge or hand back.
    type Received: Received;

    /// How messages map to subjects on this broker.
    fn subjects(&self) -> &Subjects;

    /// Publishes `message` and returns once the broker has stored it. Publishing the
    /// same message id again within the broker's deduplication window stores nothing new
    /// and still succeeds.
    fn publish(
        &self,
        message: WireMessage,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Up to `max` messages for `subscription` (its consumer created if missing), waiting
    /// at most `wait` for the first.
    fn receive(
        &self,
        subscription: &Subscription,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Self::Received>, TransportError>> + Send;
}

/// A message received for a consumer: acknowledged once it is durable on this side, or
/// handed back to be delivered again later.
pub trait Received: Send + Sync + 'static {
    /// The message.
    fn message(&self) -> &WireMessage;

    /// How many times the broker has delivered it (1 the first time).
    fn delivered(&self) -> u64;

    /// Done with it: the broker does not deliver it again.
    fn ack(&self) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Not now: the broker delivers it again after `delay`.
    fn retry_later(
        &self,
        delay: Duration,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
}
