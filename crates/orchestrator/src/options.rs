//! The options of a unit of work: its name, isolation level, lock timeout, retry policy,
//! and what a handler's unit of work processes.

use std::time::Duration;

use keel_domain::{Envelope, EventId};

use crate::RetryPolicy;
use crate::group::GroupCommit;

/// The options of Keel's own short units of work (claims, outcomes): retried more than a
/// user's, since they only ever meet other workers.
/// They are left out of the unit-of-work metrics, which count the application's.
pub(crate) fn internal(name: &'static str) -> UnitOfWorkOptions {
    let mut options = UnitOfWorkOptions::named(name).retry(RetryPolicy::default().max_attempts(8));
    options.internal = true;
    options
}

/// Transaction isolation level (PostgreSQL; SQLite transactions are always serializable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// PostgreSQL's default: each statement sees what was committed before it began.
    #[default]
    ReadCommitted,
    /// One snapshot for the whole transaction; concurrent updates fail with a
    /// serialization failure (retried).
    RepeatableRead,
    /// Full serializability; anomalies such as write skew fail with a serialization
    /// failure (retried).
    Serializable,
}

/// Options of one unit of work: its name (for logs and errors), isolation level, lock
/// timeout and retry policy.
///
/// ```
/// # mod keel { pub use keel_orchestrator::{Isolation, RetryPolicy, UnitOfWorkOptions}; }
/// use std::time::Duration;
/// use keel::{Isolation, RetryPolicy, UnitOfWorkOptions};
///
/// let transfer = UnitOfWorkOptions::named("transfer")
///     .isolation(Isolation::Serializable)
///     .lock_timeout(Duration::from_millis(200))
///     .retry(RetryPolicy::default().max_attempts(8));
/// assert_eq!(transfer.name(), "transfer");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct UnitOfWorkOptions {
    pub(crate) name: &'static str,
    pub(crate) isolation: Isolation,
    pub(crate) lock_timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    pub(crate) cause: Option<Cause>,
    pub(crate) processes: Option<(Vec<EventId>, &'static str)>,
    pub(crate) internal: bool,
    pub(crate) grouping: Option<GroupCommit>,
}

/// The event whose handling runs a unit of work: events it records join the cause's
/// correlation and name it as their causation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cause {
    pub(crate) correlation_id: uuid::Uuid,
    pub(crate) causation_id: EventId,
}

impl Default for UnitOfWorkOptions {
    fn default() -> Self {
        UnitOfWorkOptions::named("unit_of_work")
    }
}

impl UnitOfWorkOptions {
    /// Default options under a name that appears in spans and errors.
    pub fn named(name: &'static str) -> Self {
        UnitOfWorkOptions {
            name,
            isolation: Isolation::default(),
            lock_timeout: None,
            retry: RetryPolicy::default(),
            cause: None,
            internal: false,
            processes: None,
            grouping: None,
        }
    }

    /// Sets the isolation level (PostgreSQL).
    #[must_use]
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Bounds how long any lock of this unit of work may be waited for. On PostgreSQL it
    /// sets `lock_timeout` for the transaction; on SQLite it bounds the wait for the write
    /// lock. Exceeding it is [`Error::LockTimeout`](crate::Error::LockTimeout), which is retried.
    #[must_use]
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = Some(timeout);
        self
    }

    /// Sets the retry policy for transient failures.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Marks the events this unit of work records as caused by `event` (same correlation
    /// id, causation id = `event.id`). Handler contexts set this for you.
    #[must_use]
    pub fn caused_by(mut self, event: &Envelope) -> Self {
        self.cause = Some(Cause {
            correlation_id: event.correlation_id,
            causation_id: event.id,
        });
        self
    }

    /// Makes this unit of work the one that processes the delivery of event `event_id` to
    /// `handler`: it marks the delivery done in the same transaction as the handler's
    /// effects (first thing alone; in a group, for all members just before the commit). If
    /// the delivery is already done, nothing the steps did commits and the result is
    /// [`Error::AlreadyProcessed`](crate::Error::AlreadyProcessed) (alone, the steps do not
    /// run). Handler contexts set this for you.
    #[must_use]
    pub fn processing(self, event_id: EventId, handler: &'static str) -> Self {
        self.processing_all(vec![event_id], handler)
    }

    /// [`UnitOfWorkOptions::processing`] for a batch of commands handled together: all of them
    /// are marked done with the batch's effects, or none. If only some are still pending,
    /// nothing the steps did commits and the result is [`Error::BatchPartlyProcessed`](crate::Error::BatchPartlyProcessed).
    #[must_use]
    pub fn processing_all(mut self, event_ids: Vec<EventId>, handler: &'static str) -> Self {
        self.processes = Some((event_ids, handler));
        self
    }

    /// Lets this unit of work share its transaction and its commit with others running at
    /// the same time ([`GroupCommit`]); its call still returns only after that commit.
    /// Ignored with a non-default isolation or a lock timeout of its own. The dispatcher
    /// sets it for handlers (`DeliveryOptions::group_commit`).
    #[must_use]
    pub fn grouped(mut self, grouping: GroupCommit) -> Self {
        self.grouping = Some(grouping);
        self
    }

    /// The retry policy of this unit of work.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The name given to this unit of work.
    pub fn name(&self) -> &'static str {
        self.name
    }
}
