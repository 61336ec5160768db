//! Sending commands straight to the broker, outside any unit of work.
//!
//! A burst of commands (a thousand likes at once) should not cost one database commit
//! each. A [`CommandBus`] publishes each command to the broker and returns once the broker
//! has stored it. Durable then means what the stream's storage makes it: replicated on a
//! three-node cluster, written to the page cache on one NATS 2.9 server (synced every two
//! minutes). Unlike an outbox row, nothing is left to publish it again from. The service that handles
//! the command consumes it like a forwarded one ([`Consumers`](crate::Consumers)), and runs
//! each key's commands one at a time; ordered ones
//! ([`Command::ORDERED`]) go to their key's partition and
//! run in the order the broker stored them.
//!
//! Inside a unit of work, send with `tx.send(command)` as always: the command is written
//! with the transaction and leaves only if it commits; a [`Forwarder`](crate::Forwarder)
//! registered as the command's handler passes it on to the broker.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use keel_domain::{Command, Envelope, EventId};
use keel_orchestrator::{Error, RetryPolicy};

use crate::transport::Transport;
use crate::wire;

/// Publishes commands to the broker.
///
/// ```no_run
/// # mod keel { pub use keel_domain::Command; pub use keel_nats as nats; }
/// use keel::nats::{CommandBus, JetStream, StreamOptions};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct LikePost { post_id: i64, user_id: i64 }
/// # impl keel::Command for LikePost { const NAME: &'static str = "post.like.v1";
/// #   fn key(&self) -> Option<String> { Some(format!("post:{}", self.post_id)) } }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let jetstream = JetStream::connect("nats://127.0.0.1:4222", StreamOptions::default()).await?;
/// let bus = CommandBus::new(jetstream);
/// bus.send(&LikePost { post_id: 1, user_id: 42 }).await?; // stored by JetStream
/// # Ok(()) }
/// ```
pub struct CommandBus<T> {
    transport: Arc<T>,
    retry: RetryPolicy,
}

impl<T> Clone for CommandBus<T> {
    fn clone(&self) -> Self {
        CommandBus {
            transport: self.transport.clone(),
            retry: self.retry.clone(),
        }
    }
}

impl<T> std::fmt::Debug for CommandBus<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// How a failed publish is tried again before `send` fails: 3 attempts, 100 ms then
/// 400 ms. The caller is waiting, so this is short; a publish whose acknowledgement was
/// lost is tried with the same id, which the broker's duplicate window makes harmless.
pub fn default_retry() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(3)
        .base_delay(Duration::from_millis(100))
        .multiplier(4.0)
}

impl<T: Transport> CommandBus<T> {
    /// Sends through `transport`, with [`default_retry`].
    pub fn new(transport: T) -> Self {
        CommandBus {
            transport: Arc::new(transport),
            retry: default_retry(),
        }
    }

    /// How failed publishes are tried again before `send` fails.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Publishes `command` and returns its id once the broker has stored it.
    ///
    /// Fails with [`Error::Serialization`] if the command does not serialize, and with an
    /// external error if the broker did not acknowledge it within the retry policy's
    /// attempts: then it may or may not have been stored, and sending it again sends a
    /// second command.
    pub async fn send<C: Command>(&self, command: &C) -> Result<EventId, Error> {
        let envelope = wrap(command)?;
        self.publish(&envelope, C::ORDERED).await?;
        Ok(envelope.id)
    }

    /// Publishes every command of `commands` at once (each with its own acknowledgement,
    /// all awaited together); returns their ids once the broker has stored them all.
    /// Faster than one [`send`](CommandBus::send) after another, but the commands of one
    /// key may be stored in any order among themselves: send one after another where
    /// their order matters.
    pub async fn send_all<C: Command>(&self, commands: &[C]) -> Result<Vec<EventId>, Error> {
        let envelopes = commands.iter().map(wrap).collect::<Result<Vec<_>, _>>()?;
        try_join_all(envelopes.iter().map(|e| self.publish(e, C::ORDERED))).await?;
        Ok(envelopes.into_iter().map(|e| e.id).collect())
    }

    async fn publish(&self, envelope: &Envelope, ordered: bool) -> Result<(), Error> {
        let message = self
            .transport
            .subjects()
            .command(envelope, ordered)
            .and_then(|subject| wire::encode(subject, envelope))
            .map_err(|e| Error::rejected(std::io::Error::other(e)))?;
        let mut attempt = 1;
        loop {
            match self.transport.publish(message.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) if !self.retry.allows_another_after(attempt) => {
                    return Err(Error::external(error));
                }
                Err(error) => {
                    tracing::debug!(%error, attempt, command = %envelope.name, "publish failed; trying again");
                    attempt += 1;
                    tokio::time::sleep(self.retry.jittered_delay_before(attempt)).await;
                }
            }
        }
    }
}

fn wrap<C: Command>(command: &C) -> Result<Envelope, Error> {
    Envelope::wrap_command(command).map_err(|source| Error::Serialization {
        event: C::NAME,
        source,
    })
}
