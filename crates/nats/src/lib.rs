//! # keel-nats: Keel past one database, over NATS JetStream
//!
//! Services that do not share a database exchange events through a broker, with the
//! guarantees they have inside one:
//!
//! - **Forwarding.** A [`Forwarder`] is a delivery target like a handler: every committed
//!   event it forwards has its own delivery row, claimed by the relay (leases, retries, dead
//!   letter). It publishes the event with `Nats-Msg-Id` = the event id and is marked done
//!   only after the broker's acknowledgement. The outbox row stays the truth: an event
//!   committed while the broker is down is published when it is back.
//! - **Consuming.** [`Consumers`] read, for each handler of a service, a durable JetStream
//!   consumer named after the service and the handler: the service's instances share its
//!   messages (competing consumers), and every handler gets each message (fan-out). A
//!   received batch is accepted into the service's own outbox (its inbox) in one
//!   transaction, then acknowledged; the local relay delivers it with a local delivery's
//!   guarantees, the processed marker in the handler's unit of work first among them.
//! - **Commands.** A [`CommandBus`] publishes commands straight to the broker outside any
//!   unit of work (acknowledged = durable); a forwarder passes on those sent inside one.
//!   Ordered keyed commands are spread over partitions of their subject, each consumed one
//!   message at a time, so each key's commands run in order across every instance of the
//!   consuming service; the others travel in batches.
//!
//! ## The duplicate window
//!
//! A forwarder that dies after the broker stored an event but before its delivery was
//! marked done publishes it again when its lease expires, and a publish that failed is
//! retried after the retry policy's delay. JetStream drops the second copy only if its
//! stream's duplicate window still remembers the id, so the window must exceed the lease
//! (60 s by default) plus the longest retry delay (30 s with [`forward::default_retry`])
//! plus the broker outage you tolerate; [`StreamOptions`] defaults to 15 minutes. A
//! duplicate that slips past the window is still harmless to handlers that write through
//! their unit of work: the consumer side accepts an event id once, and runs its effects
//! once.
//!
//! ## What is left to a newer server
//!
//! NATS 2.9 (Debian's) has no per-stream fsync policy (`sync_interval`) and no pinned
//! consumers; Keel needs neither.

#![warn(missing_docs)]

pub mod bus;
pub mod consume;
pub mod forward;
pub mod jetstream;
pub mod transport;
pub mod wire;

pub use bus::CommandBus;
pub use consume::{ConsumerOptions, Consumers};
pub use forward::{Forwarder, republish};
pub use jetstream::{JetStream, JetStreamMessage, StreamOptions};
pub use transport::{Received, Subscription, Transport, TransportError};
pub use wire::{Subjects, WireMessage};
