//! Consuming from the broker: each handler of this service reads its message's subject
//! through a durable consumer of its own, shared by every instance of the service.
//!
//! A received batch is *accepted* into this service's outbox (the inbox: one transaction
//! writes the events, each once by id, and their deliveries to the handler) and only then
//! acknowledged to the broker. The local relay delivers them from there, with a local
//! delivery's guarantees: the processed marker in the handler's unit of work, leases, the
//! handler's retry policy, the dead letter, the relay's scale-out. Running handlers straight
//! from the broker would need all of that again on top of the broker's redeliveries
//! (attempt counts, NAK delays, terminate); accepting costs one local commit per batch.
//!
//! A command handler reads its command's subject through one such consumer, and each
//! partition of its ordered commands through one more (`<service>_<handler>_<partition>`)
//! that hands out one message at a time, whichever instance asks: a partition's messages
//! are accepted one after the other, so each key's commands are numbered in the order they
//! were published, and the relay runs them in that order. Keyed commands whose order does
//! not matter (likes) travel on the command's subject in batches; the relay still runs
//! each key's one at a time.
//!
//! A message that does not decode (not published by a Keel forwarder, or damaged) is
//! accepted straight into the dead letter with its reason, and acknowledged: it does not
//! come back. So is a message the database refuses while it answers: it would be refused
//! every time. When the database cannot be reached, the batch is handed back to the
//! broker, which delivers it again after a delay growing with its delivery count.

use std::sync::Arc;
use std::time::Duration;

use keel_dispatcher::{Dispatcher, Incoming};
use keel_domain::Envelope;
use keel_orchestrator::{Backend, RetryPolicy};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::transport::{Received, Subscription, Transport};
use crate::wire;

/// How a service consumes.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    service: String,
    batch: usize,
    concurrency: usize,
    wait: Duration,
}

impl ConsumerOptions {
    /// Consumers of the service named `service`: each handler's durable consumer is named
    /// `<service>_<handler>`, so the instances of one service share its messages while
    /// another service gets its own copy.
    pub fn new(service: &str) -> Self {
        ConsumerOptions {
            service: service.to_owned(),
            batch: 100,
            concurrency: 4,
            wait: Duration::from_secs(1),
        }
    }

    /// Messages accepted per transaction at most (default 100).
    #[must_use]
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Batches of one consumer accepted at once by this process, each in its own
    /// transaction (default 4): receiving goes on while a batch is written. A partition of
    /// ordered commands is always accepted one message at a time.
    #[must_use]
    pub fn concurrency(mut self, batches: usize) -> Self {
        self.concurrency = batches.max(1);
        self
    }

    /// The durable consumer's name for `handler`: `<service>_<handler>`, with every
    /// character NATS does not allow in a name (`.`, `*`, `>`, whitespace) made `_`.
    pub fn consumer_name(&self, handler: &str) -> String {
        format!("{}_{handler}", self.service)
            .chars()
            .map(|c| {
                if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    }
}

/// The consumers of one service, running until [`Consumers::shutdown`].
#[derive(Debug)]
pub struct Consumers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Consumers {
    /// Starts a consumer for each of `handlers` (registered in `dispatcher`'s registry).
    /// The dispatcher's relay (started by `keel::App`) delivers what they accept.
    pub fn start<B: Backend, T: Transport>(
        dispatcher: &Dispatcher<B>,
        transport: T,
        options: ConsumerOptions,
        handlers: &[&str],
    ) -> Result<Self, String> {
        let transport = Arc::new(transport);
        let (stop, stopped) = watch::channel(false);
        let subjects = transport.subjects().clone();
        let mut planned: Vec<(&'static str, Subscription)> = Vec::new();
        for name in handlers {
            let Some(handler) = dispatcher.registry().handlers().find(|h| h.name() == *name) else {
                let registered = dispatcher.registry().handlers().map(|h| h.name());
                return Err(unknown_handler(name, registered));
            };
            let durable = options.consumer_name(handler.name());
            let mut subscriptions = vec![Subscription {
                durable: durable.clone(),
                subject: subjects.message(handler.event())?,
                in_order: false,
            }];
            // Ordered commands also come by partition (an event handler keeps no key order).
            if handler.keeps_key_order() {
                for partition in 0..subjects.partitions() {
                    subscriptions.push(Subscription {
                        durable: format!("{durable}_{partition}"),
                        subject: subjects.partition(handler.event(), partition)?,
                        in_order: true,
                    });
                }
            }
            for subscription in subscriptions {
                if let Some((other, _)) = planned
                    .iter()
                    .find(|(_, s)| s.durable == subscription.durable)
                {
                    return Err(format!(
                        "handlers `{other}` and `{}` would share the consumer `{}`: rename one \
                         of them",
                        handler.name(),
                        subscription.durable
                    ));
                }
                planned.push((handler.name(), subscription));
            }
        }
        let tasks = planned
            .into_iter()
            .map(|(handler, subscription)| {
                tokio::spawn(consume(
                    dispatcher.clone(),
                    transport.clone(),
                    options.clone(),
                    handler,
                    subscription,
                    stopped.clone(),
                ))
            })
            .collect();
        Ok(Consumers { stop, tasks })
    }

    /// Stops receiving; batches being accepted are finished (and acknowledged) first.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn consume<B: Backend, T: Transport>(
    dispatcher: Dispatcher<B>,
    transport: Arc<T>,
    options: ConsumerOptions,
    handler: &'static str,
    subscription: Subscription,
    mut stop: watch::Receiver<bool>,
) {
    let consumer = subscription.durable.as_str();
    let in_flight = if subscription.in_order {
        1
    } else {
        options.concurrency
    };
    let mut accepting = JoinSet::new();
    let mut failing = false;
    while !*stop.borrow() {
        while accepting.len() >= in_flight {
            accepting.join_next().await;
        }
        let received = tokio::select! {
            _ = stop.changed() => break,
            received = transport.receive(&subscription, options.batch, options.wait) => received,
        };
        let batch = match received {
            Ok(batch) => batch,
            Err(error) => {
                if !failing {
                    tracing::warn!(%consumer, %error, "cannot receive from the broker; retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if failing {
            tracing::info!(%consumer, "receiving from the broker again");
            failing = false;
        }
        if batch.is_empty() {
            continue;
        }
        let incoming = read(transport.as_ref(), &batch, subscription.in_order);
        let (dispatcher, consumer) = (dispatcher.clone(), subscription.durable.clone());
        accepting.spawn(async move {
            accept(&dispatcher, handler, &consumer, &batch, &incoming).await;
        });
    }
    // Batches being accepted are finished and acknowledged.
    while accepting.join_next().await.is_some() {}
}

/// The envelopes of a received batch; one that does not decode stands in for its message
/// in the dead letter.
fn read<T: Transport>(transport: &T, batch: &[T::Received], ordered: bool) -> Vec<Incoming> {
    batch
        .iter()
        .map(|received| {
            let message = received.message();
            match wire::decode(message) {
                Ok(envelope) => Incoming {
                    envelope,
                    dead: None,
                    ordered,
                },
                Err(reason) => Incoming {
                    envelope: wire::stand_in(transport.subjects(), message),
                    dead: Some(format!(
                        "message on `{}` cannot be read: {reason}",
                        message.subject
                    )),
                    ordered,
                },
            }
        })
        .collect()
}

/// Accepts a batch, then acknowledges it. When the database refuses it while it answers,
/// the messages are accepted one by one and the ones it refuses wait in the dead letter:
/// they would be refused every time, and in a partition of ordered commands they would
/// hold every key behind them. When the database does not answer, the batch is handed back
/// to the broker.
async fn accept<B: Backend, R: Received>(
    dispatcher: &Dispatcher<B>,
    handler: &'static str,
    consumer: &str,
    batch: &[R],
    incoming: &[Incoming],
) {
    let error = match dispatcher.accept(handler, incoming).await {
        Ok(_) => {
            for received in batch {
                acknowledge(received, consumer).await;
            }
            return;
        }
        Err(error) => error,
    };
    if dispatcher
        .database()
        .execute_script("SELECT 1")
        .await
        .is_err()
    {
        tracing::warn!(%consumer, %error, "cannot accept messages; the broker delivers them again");
        for received in batch {
            hand_back(received).await;
        }
        return;
    }
    for (received, message) in batch.iter().zip(incoming) {
        let accepted = match dispatcher
            .accept(handler, std::slice::from_ref(message))
            .await
        {
            Ok(_) => Ok(()),
            Err(refused) => {
                tracing::warn!(%consumer, error = %refused, id = %message.envelope.id, "the database refuses a message; it waits in the dead letter");
                let dead = Incoming {
                    envelope: storable(&message.envelope),
                    dead: Some(format!("the database refused the message: {refused}")),
                    ordered: message.ordered,
                };
                dispatcher.accept(handler, &[dead]).await.map(|_| ())
            }
        };
        match accepted {
            Ok(()) => acknowledge(received, consumer).await,
            Err(_) => hand_back(received).await,
        }
    }
}

async fn acknowledge<R: Received>(received: &R, consumer: &str) {
    if let Err(error) = received.ack().await {
        // Delivered again after the broker's ack wait; accepting it again changes nothing.
        tracing::debug!(%consumer, %error, "acknowledgement lost");
    }
}

async fn hand_back<R: Received>(received: &R) {
    let _ = received
        .retry_later(retry_delay(received.delivered()))
        .await;
}

/// A copy of `envelope` any database stores: its payload as the text of its JSON, its
/// headers dropped, no NUL character in its text (what PostgreSQL refuses in `text`, and
/// in `jsonb` as `\u0000`).
fn storable(envelope: &Envelope) -> Envelope {
    let clean = |text: &str| text.replace('\0', "\u{FFFD}");
    Envelope {
        name: clean(&envelope.name),
        aggregate_type: clean(&envelope.aggregate_type),
        aggregate_id: clean(&envelope.aggregate_id),
        payload: serde_json::Value::String(clean(&envelope.payload.to_string())),
        headers: Default::default(),
        ..envelope.clone()
    }
}

/// Waits before a message refused by this side comes back: 1 s doubling, at most 1 min
/// (the broker's delivery count is the attempt that failed).
fn retry_delay(delivered: u64) -> Duration {
    let attempt = u32::try_from(delivered)
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    RetryPolicy::default()
        .base_delay(Duration::from_secs(1))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(60))
        .delay_before(attempt)
}

/// The error for a handler name that no registered handler has; `register_handler!` names
/// a handler by its function's path, so the names ending with `name` are offered.
fn unknown_handler<'a>(name: &str, registered: impl Iterator<Item = &'a str>) -> String {
    let suffix = format!("::{name}");
    let ending: Vec<_> = registered
        .filter(|known| known.ends_with(&suffix))
        .map(|known| format!("`{known}`"))
        .collect();
    if ending.is_empty() {
        format!("no handler named `{name}` is registered: register it before consuming")
    } else {
        format!(
            "no handler is named `{name}`; handlers registered with `register_handler!` are \
             named by their path: {}",
            ending.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_handler_name_is_answered_with_the_registered_ones_ending_so() {
        let registered = ["tally::handlers::count_vote", "tally::handlers::audit"];
        let error = unknown_handler("count_vote", registered.into_iter());
        assert!(
            error.contains("`tally::handlers::count_vote`") && !error.contains("audit"),
            "{error}"
        );
        let error = unknown_handler("missing", registered.into_iter());
        assert!(error.contains("register it before consuming"), "{error}");
    }

    #[test]
    fn consumer_names_are_per_service_and_valid() {
        let options = ConsumerOptions::new("billing service");
        assert_eq!(
            options.consumer_name("on.order>placed"),
            "billing_service_on_order_placed"
        );
    }

    #[test]
    fn refused_messages_come_back_later_and_later() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(50), Duration::from_secs(60));
    }
}
