//! The transactional outbox: what is written with a unit of work, and what the delivery
//! side reads back.
//!
//! Events recorded by a unit of work are written in its transaction, just before `COMMIT`:
//! one `keel_events` row per event, and one `keel_deliveries` row per (event, handler)
//! when the database handle knows the handlers ([`Routing`]). They commit or vanish with
//! the unit of work's own writes, so a committed event is never lost and a rolled-back one
//! never exists.
//!
//! When the process will deliver the events itself right after commit (its *fast path*),
//! the delivery rows are written already leased to it, so no relay picks them up
//! meanwhile; if the process dies, the lease expires and any relay delivers them.
//!
//! The statements are the backends' ([`crate::store::Store`]); this module holds the
//! values they exchange with the dispatcher.

use std::sync::Arc;
use std::time::Duration;

use keel_domain::{Envelope, EventId};
use time::OffsetDateTime;

/// The channel PostgreSQL relays listen on; a unit of work notifies it when it leaves
/// deliveries for a relay.
///
/// The notification is sent right *after* the commit, not inside the transaction: a
/// PostgreSQL transaction that has issued `NOTIFY` commits under a database-wide lock, which
/// would serialize every producing transaction's commit (and its WAL flush). A relay that
/// misses a notification (its listener was reconnecting) finds the rows at its next poll.
pub const NOTIFY_CHANNEL: &str = "keel_outbox";

/// The handler name of the dead-letter entry of an event no handler is registered for.
pub const NO_HANDLER: &str = "keel::no_handler";

/// The error of the dead-letter entry of an event no handler is registered for.
pub(crate) fn no_handler_error(name: &str) -> String {
    format!(
        "no handler is registered for event `{name}` in the process that routed it; register \
         a handler, then retry this entry from the dead letter"
    )
}

/// Which handlers the events of a unit of work are delivered to, and whether this
/// process delivers them itself right after commit.
///
/// Installed on a [`Database`](crate::Database) handle by the dispatcher; without it,
/// events are written unrouted and a relay routes them.
pub trait Routing: Send + Sync + 'static {
    /// The names of the handlers of the event named `event` (empty if none).
    fn handlers_for(&self, event: &str) -> &[&'static str];

    /// How long deliveries written by this process are reserved for its fast path, or
    /// `None` if it leaves them all to relays.
    fn fast_path_lease(&self) -> Option<Duration>;

    /// Called after a commit that left deliveries for relays (commands, unrouted events),
    /// so that a relay of this process can start at once.
    fn left_for_relay(&self) {}
}

/// A command sent by a unit of work, with its ordering key.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The command, wrapped.
    pub envelope: Envelope,
    /// Its ordering key.
    pub key: Option<String>,
    /// Whether its key's commands run in commit order ([`Command::ORDERED`]).
    ///
    /// [`Command::ORDERED`]: keel_domain::Command::ORDERED
    pub ordered: bool,
}

/// What one unit of work writes to the outbox.
#[allow(missing_debug_implementations)] // holds the routing table, a trait object
pub struct Outgoing<'a> {
    /// The recorded events.
    pub events: &'a [Envelope],
    /// The sent commands.
    pub commands: &'a [Sent],
    /// The handlers, when this handle knows them.
    pub routing: Option<&'a dyn Routing>,
    /// The fast path's lease on the event deliveries: its token and duration.
    pub lease: Option<(uuid::Uuid, Duration)>,
    /// The marker and isolation level of the unit of work's transaction, when the write is
    /// part of one: the write happens only inside that very transaction.
    pub marker: Option<(uuid::Uuid, crate::Isolation)>,
}

impl Outgoing<'_> {
    /// The handlers of `envelope` (none when unrouted).
    pub fn handlers_of(&self, envelope: &Envelope) -> &[&'static str] {
        self.routing
            .map(|r| r.handlers_for(&envelope.name))
            .unwrap_or(&[])
    }

    /// Every message, events first, each with its ordering key (none for events).
    pub fn messages(&self) -> impl Iterator<Item = (&Envelope, Option<&str>)> {
        self.events.iter().map(|e| (e, None)).chain(
            self.commands
                .iter()
                .map(|c| (&c.envelope, c.key.as_deref())),
        )
    }

    /// For each of [`Outgoing::messages`], its key if the key's commands run in commit
    /// order ([`Sent::ordered`]), else `None`.
    pub fn ordered_keys(&self) -> impl Iterator<Item = Option<&str>> {
        self.events.iter().map(|_| None).chain(
            self.commands
                .iter()
                .map(|c| c.key.as_deref().filter(|_| c.ordered)),
        )
    }

    /// Whether the deliveries of message `n` of [`Outgoing::messages`] are reserved for this
    /// process's fast path: an event's, when the process has one; a command's never (they
    /// go to workers, which honour their ordering keys).
    pub fn reserved(&self, n: usize) -> bool {
        self.lease.is_some() && n < self.events.len()
    }

    /// Whether the event deliveries written reserve anything for the fast path.
    pub fn reserves(&self) -> bool {
        self.lease.is_some() && self.events.iter().any(|e| !self.handlers_of(e).is_empty())
    }

    /// Whether a relay must pick something up now: unrouted messages, commands, or event
    /// deliveries nobody reserved.
    pub fn leaves_for_relay(&self) -> bool {
        let unrouted = self.messages().any(|(e, _)| self.handlers_of(e).is_empty());
        let unreserved =
            self.lease.is_none() && self.events.iter().any(|e| !self.handlers_of(e).is_empty());
        unrouted || !self.commands.is_empty() || unreserved
    }
}

/// A message received from another system (a broker, a webhook) for one handler of this
/// service: written to the outbox as if this service had recorded it, and delivered by the
/// relay with every guarantee of a local delivery.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The message, with the id it was sent with: accepting it again changes nothing.
    pub envelope: Envelope,
    /// Why it cannot be delivered, when it arrived broken: it goes to the dead letter
    /// instead, with this error.
    pub dead: Option<String>,
    /// Whether its key's commands run in the order they are accepted (numbered from the
    /// key's counter, as [`Command::ORDERED`](keel_domain::Command::ORDERED) commands are
    /// when sent here), or only one at a time.
    pub ordered: bool,
}

impl Incoming {
    /// The ordering key it is accepted with: a command's key
    /// ([`Envelope::command_key`]), unless it goes to the dead letter.
    pub fn key(&self) -> Option<&str> {
        match self.dead {
            Some(_) => None,
            None => self.envelope.command_key(),
        }
    }

    /// Its key when it is numbered from the key's counter.
    pub fn ordered_key(&self) -> Option<&str> {
        self.key().filter(|_| self.ordered)
    }
}

/// Delivery status: to deliver.
pub const PENDING: &str = "pending";
/// Delivery status: delivered.
pub const DONE: &str = "done";
/// Delivery status: given up; kept in the dead letter.
pub const DEAD: &str = "dead";

/// One delivery claimed by this process.
#[derive(Debug)]
pub struct Claim {
    /// The event, or why its row cannot be read.
    pub event: Result<Arc<Envelope>, String>,
    /// The event's id.
    pub event_id: EventId,
    /// The handler.
    pub handler: String,
    /// This attempt's number (1 for the first); numbers count on across retries from the
    /// dead letter.
    pub attempt: u32,
    /// The attempts made before the delivery was last retried from the dead letter (0 if
    /// never): the retry policy counts its attempts from there.
    pub retried_from: u32,
    /// The lease token.
    pub token: uuid::Uuid,
    /// When the lease was taken (process time, only to tell how long the claim waited).
    pub claimed_at: std::time::Instant,
}

impl Claim {
    /// This attempt's number in the current run of the retry policy (the run restarts
    /// when the delivery is retried from the dead letter).
    pub fn run_attempt(&self) -> u32 {
        self.attempt.saturating_sub(self.retried_from)
    }
}

/// What one claim of deliveries without ordering key leased.
#[derive(Debug, Default)]
pub struct Claimed {
    /// The deliveries leased.
    pub claims: Vec<Claim>,
    /// The latest due time among them (`None` when nothing was claimed): where a next
    /// claim can start, past the deliveries this one leased.
    pub last_due: Option<OffsetDateTime>,
}

/// Deliveries claimed together: one delivery, or a batch of commands of one ordering
/// key (whose key lease, `key`, is released when the group ends).
#[derive(Debug)]
pub struct Group {
    /// The deliveries.
    pub claims: Vec<Claim>,
    /// The ordering key held, if any.
    pub key: Option<String>,
}

impl Group {
    /// A group of one delivery.
    pub fn one(claim: Claim) -> Self {
        Group {
            claims: vec![claim],
            key: None,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy)]
pub enum Next {
    /// Retry this long after the failure (the database's clock).
    RetryIn(Duration),
    /// Give up: the dead letter.
    Dead,
}

/// One failed attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    /// The attempt's number (1 for the first; 0 for a routing failure).
    pub attempt: u32,
    /// When it failed (the database's clock).
    pub failed_at: OffsetDateTime,
    /// What went wrong.
    pub error: String,
}

/// A delivery in the dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The event's id.
    pub event_id: EventId,
    /// The event's name (empty when the event row is missing: see `event`).
    pub event_name: String,
    /// The handler that gave up ([`NO_HANDLER`] if none is registered).
    pub handler: String,
    /// The stored payload, as JSON text (empty when the event row is missing).
    pub payload: String,
    /// The event, if its row exists and still reads.
    pub event: Option<Envelope>,
    /// Attempts made.
    pub attempts: u32,
    /// Every failed attempt, oldest first.
    pub failures: Vec<FailedAttempt>,
}
