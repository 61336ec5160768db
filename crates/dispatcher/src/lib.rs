//! After-commit delivery of domain events to their handlers.
//!
//! # Why events wait for the commit
//!
//! A handler is a *decoupled* reaction: it succeeds or fails on its own, and its failure
//! never undoes the use case that raised the event. If it ran inside the producing
//! transaction, it would share that transaction's fate (a handler error would roll the use
//! case back) and, worse, any query it sent to the pool would wait for a second connection
//! while the first is held: under load, the pool deadlocks. So events are *recorded* in a
//! unit of work ([`Tx::record`](keel_orchestrator::Tx::record)) and *released* only by the
//! commit's receipt ([`Committed`](keel_orchestrator::Committed)), which is the only thing
//! [`Dispatcher::dispatch`] accepts.
//!
//! # Pieces
//!
//! - [`Session`]: what application code runs units of work with. It borrows the session
//!   mutably while the unit of work runs, so the steps cannot open another one, reach the
//!   pool, or dispatch; after commit it releases the events for you.
//! - [`Handler`] and [`register_handler!`]: a handler is an
//!   `async fn(&Event, &mut HandlerContext) -> Result<(), keel::Error>`, registered where
//!   it is defined. [`Registry::global`] collects every registration of the program;
//!   [`Registry::new`] + [`Registry::register`] build an exact set (for tests).
//! - [`HandlerContext`]: what a handler gets besides the event: the event's id (its
//!   idempotency key) and its own units of work, whose events chain after commit.
//! - [`Dispatcher`]: delivers each (event, handler) pair on its own, from the transactional
//!   outbox: at once after commit in the committing process (the fast path), and through
//!   the relay for everything else (crashes, retries, other producers). Failures are retried
//!   per the handler's [`RetryPolicy`](keel_orchestrator::RetryPolicy), then kept in the
//!   [`DeadLetters`].
//!
//! # Guarantees
//!
//! - Every event of a committed unit of work is delivered to every handler registered for
//!   it, at least once, even if the process dies right after the commit (the outbox rows
//!   commit with the unit of work; the relay delivers what the fast path could not).
//! - A handler's database effects happen once per event: its unit of work marks the
//!   delivery done in the same transaction ([`HandlerContext`]).
//! - While a delivery's lease holds, no other relay or process runs it.

#![warn(missing_docs)]

mod admin;
mod backfill;
mod context;
mod cursor;
mod dead_letter;
mod delivery;
mod dispatcher;
mod handler;
mod inbox;
mod marks;
mod options;
mod registry;
mod relay;
mod routing;
mod running;
mod session;
mod wake;

pub use admin::Admin;
pub use context::HandlerContext;
pub use dead_letter::DeadLetters;
pub use dispatcher::{Dispatcher, RelayHealth};
pub use handler::{Handler, HandlerArg, HandlerCall, HandlerFn, HandlerKind};
pub use keel_orchestrator::operations::{
    DeadFilter, HandlerStatus, LeaseHolder, RelayStatus, SchemaState, Status, Unsubscribed,
};
pub use keel_orchestrator::outbox::{DeadLetter, FailedAttempt, Incoming, NO_HANDLER};
pub use options::DeliveryOptions;
pub use registry::{HandlerRegistration, Registry, RegistryError};
pub use relay::{WorkerLimits, WorkerReport};
pub use session::Session;

#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
