//! The pure core of a Keel service: aggregates, their versions, and domain events.
//!
//! Nothing here performs I/O. An aggregate is a consistency boundary with an id and a
//! [`Version`] used for optimistic locking; a [`DomainEvent`] is a fact, named in the past
//! tense, that travels after commit inside an [`Envelope`]. Keeping this crate free of
//! databases and runtimes means the domain rules of a service can be unit-tested with
//! plain `#[test]` functions, and that the same types serve every backend.
//!
//! ```
//! # mod keel { pub use keel_domain::{DomainEvent, Envelope}; }
//! use keel::{DomainEvent, Envelope};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, PartialEq)]
//! struct AccountDebited { account_id: i64, amount: i64 }
//!
//! impl DomainEvent for AccountDebited {
//!     const NAME: &'static str = "account.debited.v1";
//!     const AGGREGATE_TYPE: &'static str = "Account";
//!     fn aggregate_id(&self) -> String { self.account_id.to_string() }
//! }
//!
//! let envelope = Envelope::wrap(&AccountDebited { account_id: 7, amount: 50 }).unwrap();
//! assert_eq!(envelope.name, "account.debited.v1");
//! assert_eq!(envelope.decode::<AccountDebited>().unwrap().amount, 50);
//! ```

#![warn(missing_docs)]

mod aggregate;
mod command;
mod envelope;
mod event;
mod id;
mod version;

pub use aggregate::Aggregate;
pub use command::Command;
pub use envelope::{DecodeError, Envelope, EventId};
pub use event::DomainEvent;
pub use id::Id;
pub use version::Version;
