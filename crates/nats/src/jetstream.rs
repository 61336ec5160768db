//! The [`Transport`] on NATS JetStream, through the official `async-nats` client.
//!
//! One stream captures `<prefix>.>`. Publishes carry `Nats-Msg-Id` (the event id), so a
//! forwarder that publishes again after a crash stores nothing new within the stream's
//! duplicate window. Consumers are durable pull consumers with explicit acks: every process
//! that uses the same consumer name shares its messages. Each keeps one message stream
//! (pull requests outstanding), so a message is handed over as soon as it arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::{FutureExt, StreamExt};

use crate::transport::{Received, Subscription, Transport, TransportError};
use crate::wire::{Subjects, WireMessage};

/// How a [`JetStream`] transport sets up its stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    name: String,
    subjects: Subjects,
    duplicate_window: Duration,
    max_age: Duration,
    replicas: usize,
    ack_wait: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            name: "KEEL".to_owned(),
            subjects: Subjects::new("keel", 16),
            duplicate_window: Duration::from_secs(15 * 60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
            ack_wait: Duration::from_secs(60),
        }
    }
}

impl StreamOptions {
    /// The stream's name (default `KEEL`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The first token of every subject (default `keel`): messages go to
    /// `<prefix>.<message name>`, and the stream captures `<prefix>.>`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subjects = Subjects::new(prefix, self.subjects.partitions());
        self
    }

    /// How many partitions ordered commands are spread over by key (default 16): each is
    /// consumed one message at a time, so this bounds how many keys progress at once.
    /// Every process on the stream must use the same count; changing it while ordered
    /// commands are in flight can reorder them.
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.subjects = Subjects::new(self.subjects.prefix(), partitions);
        self
    }

    /// How long the stream remembers message ids to drop duplicates (default 15 minutes).
    /// It must cover the longest time between a publish whose outcome the forwarder did not
    /// record and the publish again: the forwarder's lease, its longest retry delay and the
    /// outage you tolerate (see the crate documentation).
    #[must_use]
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// How long the stream keeps messages (default 7 days).
    #[must_use]
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Copies of each message in a JetStream cluster (default 1; 3 in production).
    #[must_use]
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// How long a received message stays with its consumer before the broker delivers it
    /// again if it was neither acknowledged nor handed back (default 60 s).
    #[must_use]
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// How messages map to subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }
}

/// NATS JetStream as Keel's [`Transport`].
#[derive(Clone)]
pub struct JetStream {
    context: jetstream::Context,
    stream: stream::Stream,
    options: StreamOptions,
    /// The message streams of the consumers used so far, by consumer name: one per
    /// consumer, shared by every receive of this connection. Held while a stream is
    /// created, so that two receives starting together do not each create one (the one
    /// replaced would be dropped with the messages it had pulled, which the broker then
    /// holds until its ack wait ends).
    consumers: Arc<tokio::sync::Mutex<HashMap<String, MessageStream>>>,
}

/// A consumer's message stream, read by one receive at a time.
type MessageStream = Arc<tokio::sync::Mutex<consumer::pull::Stream>>;

impl std::fmt::Debug for JetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStream")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl JetStream {
    /// Connects to the NATS server at `url` and creates the stream if it does not exist.
    pub async fn connect(url: &str, options: StreamOptions) -> Result<Self, TransportError> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| TransportError::new("connecting to NATS", e))?;
        Self::with_client(client, options).await
    }

    /// Uses an existing client; creates the stream if it does not exist.
    pub async fn with_client(
        client: async_nats::Client,
        options: StreamOptions,
    ) -> Result<Self, TransportError> {
        let context = jetstream::new(client);
        let stream = context
            .get_or_create_stream(stream::Config {
                name: options.name.clone(),
                subjects: vec![options.subjects.all()],
                duplicate_window: options.duplicate_window,
                max_age: options.max_age,
                num_replicas: options.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| TransportError::new("creating the JetStream stream", e))?;
        Ok(JetStream {
            context,
            stream,
            options,
            consumers: Arc::default(),
        })
    }

    /// How many messages the stream holds now.
    pub async fn stored_messages(&self) -> Result<u64, TransportError> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| TransportError::new("reading the stream's state", e))?;
        Ok(info.state.messages)
    }

    /// The message stream of `subscription`'s durable consumer, created (with the
    /// consumer, if missing) on first use and kept: pull requests stay outstanding between
    /// receives. An in-order consumer has one message unacknowledged at a time.
    async fn message_stream(
        &self,
        subscription: &Subscription,
        batch: usize,
    ) -> Result<MessageStream, TransportError> {
        let name = subscription.durable.as_str();
        let mut cache = self.consumers.lock().await;
        if let Some(messages) = cache.get(name).cloned() {
            return Ok(messages);
        }
        let consumer: consumer::Consumer<consumer::pull::Config> = self
            .stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_owned()),
                    filter_subject: subscription.subject.clone(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.options.ack_wait,
                    max_ack_pending: if subscription.in_order {
                        1
                    } else {
                        consumer::pull::Config::default().max_ack_pending
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| TransportError::new("creating the consumer", e))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await
            .map_err(|e| TransportError::new("receiving", e))?;
        let messages = Arc::new(tokio::sync::Mutex::new(messages));
        cache.insert(name.to_owned(), messages.clone());
        Ok(messages)
    }

    /// Forgets a consumer's message stream after an error: the next receive makes another.
    async fn forget(&self, consumer: &str) {
        self.consumers.lock().await.remove(consumer);
    }

    /// The options the stream was set up with.
    pub fn options(&self) -> &StreamOptions {
        &self.options
    }
}

impl Transport for JetStream {
    type Received = JetStreamMessage;

    fn subjects(&self) -> &Subjects {
        &self.options.subjects
    }

    async fn publish(&self, message: WireMessage) -> Result<(), TransportError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let ack = self
            .context
            .publish_with_headers(message.subject, headers, message.body)
            .await
            .map_err(|e| TransportError::new("publishing", e))?;
        ack.await
            .map_err(|e| TransportError::new("waiting for the publish acknowledgement", e))?;
        Ok(())
    }

    async fn receive(
        &self,
        subscription: &Subscription,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<JetStreamMessage>, TransportError> {
        let consumer = subscription.durable.as_str();
        let messages = self.message_stream(subscription, max).await?;
        let mut messages = messages.lock().await;
        // The first message is waited for; then whatever has already arrived, up to `max`:
        // a batch never waits to fill up, so a lone message goes through at once.
        let first = match tokio::time::timeout(wait, messages.next()).await {
            Err(_waited) => return Ok(Vec::new()),
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                self.forget(consumer).await;
                return Err(TransportError::new("receiving", error));
            }
            Ok(None) => {
                self.forget(consumer).await;
                return Err(TransportError::new("receiving", "the message stream ended"));
            }
        };
        let mut received = vec![JetStreamMessage::from(first)];
        while received.len() < max {
            match messages.next().now_or_never() {
                Some(Some(Ok(message))) => received.push(JetStreamMessage::from(message)),
                _ => break,
            }
        }
        Ok(received)
    }
}

impl From<jetstream::Message> for JetStreamMessage {
    fn from(message: jetstream::Message) -> Self {
        let delivered = message
            .info()
            .map(|i| i.delivered.max(1) as u64)
            .unwrap_or(1);
        let headers = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.as_str().to_owned()))
            })
            .collect();
        let wire = WireMessage {
            subject: message.subject.to_string(),
            headers,
            body: message.payload.clone(),
        };
        JetStreamMessage {
            wire,
            delivered,
            message,
        }
    }
}

/// A message received from JetStream.
pub struct JetStreamMessage {
    wire: WireMessage,
    delivered: u64,
    message: jetstream::Message,
}

impl std::fmt::Debug for JetStreamMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamMessage")
            .field("subject", &self.wire.subject)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl Received for JetStreamMessage {
    fn message(&self) -> &WireMessage {
        &self.wire
    }

    fn delivered(&self) -> u64 {
        self.delivered
    }

    async fn ack(&self) -> Result<(), TransportError> {
        self.message
            .ack()
            .await
            .map_err(|e| TransportError::new("acknowledging", e))
    }

    async fn retry_later(&self, delay: Duration) -> Result<(), TransportError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| TransportError::new("handing a message back", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two receives of one consumer starting together (two consumers started at once on
    /// one connection) get the same message stream: a second one would replace the first,
    /// which would be dropped with the messages it had pulled, held by the broker until
    /// its ack wait ends (a minute by default).
    #[tokio::test]
    async fn receives_starting_together_share_one_message_stream() {
        let Ok(url) = std::env::var("KEEL_TEST_NATS_URL") else {
            assert!(
                std::env::var("KEEL_REQUIRE_NATS").as_deref() != Ok("1"),
                "KEEL_TEST_NATS_URL is not set and KEEL_REQUIRE_NATS=1"
            );
            eprintln!("note: KEEL_TEST_NATS_URL is not set; skipping a NATS test");
            return;
        };
        let name = format!("SHARED{}", uuid::Uuid::now_v7().simple());
        let options = StreamOptions::default()
            .name(name.clone())
            .prefix(name.to_lowercase());
        let jetstream = JetStream::connect(&url, options).await.unwrap();
        let subscription = Subscription {
            durable: "shared".to_owned(),
            subject: jetstream.subjects().all(),
            in_order: false,
        };
        let other = jetstream.clone();
        let (first, second) = tokio::join!(
            jetstream.message_stream(&subscription, 10),
            other.message_stream(&subscription, 10)
        );
        let same = Arc::ptr_eq(&first.unwrap(), &second.unwrap());
        let _ = jetstream.context.delete_stream(&name).await;
        assert!(same, "two message streams for one consumer");
    }
}
