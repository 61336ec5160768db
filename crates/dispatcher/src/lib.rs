//! After-commit delivery of domain events to their handlers.
//!
//! This crate will hold the handler registry, the in-process fast path, the durable relay,
//! per-handler retries, the dead letter and the command queue. It depends on
//! `keel-orchestrator` (units of work, the outbox write side) and never the other way
//! round: nothing that runs inside a transaction can reach a dispatcher.
//!
//! It exports nothing yet.

#![warn(missing_docs)]
