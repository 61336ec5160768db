//! What operators read and select: the delivery status per handler, the relays at work,
//! which dead deliveries an action applies to, and whether the schema is current.
//!
//! These are the values behind the `keel` command; the statements that fill them are the
//! backends' ([`crate::store::Store`]). Every age is computed by the database's clock, so
//! an operator's laptop with a wrong clock reads the same figures as the servers.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use time::OffsetDateTime;

/// The deliveries of one handler (or command handler) as they stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerStatus {
    /// The name of the event or command it handles (empty if no process recorded it).
    pub message: String,
    /// The handler's name.
    pub handler: String,
    /// Waiting for their first attempt (or their first after a retry from the dead letter).
    pub pending: i64,
    /// Leased by a relay or a fast path now.
    pub in_flight: i64,
    /// Failed at least once, waiting for their next attempt.
    pub retrying: i64,
    /// In the dead letter.
    pub dead: i64,
    /// How long the oldest unfinished delivery's event has waited, in milliseconds.
    pub oldest_pending_ms: Option<i64>,
    /// Deliveries finished in the last minute.
    pub done_last_minute: i64,
    /// Who holds the leases of the deliveries in flight.
    pub leases: Vec<LeaseHolder>,
}

/// How many of a handler's deliveries one relay holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The relay's process ([`RelayStatus::process`]).
    pub process: String,
    /// Deliveries it holds.
    pub deliveries: i64,
}

/// A process that runs a relay, as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// The process's identity: the prefix of the lease tokens it writes.
    pub process: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id on that host.
    pub pid: i64,
    /// When its relay started.
    pub started_at: OffsetDateTime,
    /// Milliseconds since it last reported (every [`HEARTBEAT`]); a relay silent for much
    /// longer has stopped.
    pub silent_ms: i64,
}

/// Everything `keel status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Per handler, by message then handler name.
    pub handlers: Vec<HandlerStatus>,
    /// Events no relay has routed to their handlers yet.
    pub unrouted: i64,
    /// The relays that reported in the last day.
    pub relays: Vec<RelayStatus>,
}

/// What removing a handler's subscriptions removed (`Admin::unsubscribe`,
/// `keel unsubscribe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribed {
    /// Its (message, handler) subscriptions.
    pub subscriptions: u64,
    /// Its pending deliveries (dead ones stay).
    pub deliveries: u64,
}

/// How often a relay reports that it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Which dead deliveries a list or a bulk action applies to; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// Only the deliveries of this event (or command).
    pub event_id: Option<keel_domain::EventId>,
    /// Only this handler's.
    pub handler: Option<String>,
    /// Only deliveries of the event (or command) of this name.
    pub message: Option<String>,
    /// Only those whose last error contains this text (case-insensitive).
    pub error_contains: Option<String>,
    /// Only those given up at least this long ago.
    pub older_than: Option<Duration>,
    /// Only those given up at most this long ago.
    pub newer_than: Option<Duration>,
    /// At most this many, oldest first.
    pub limit: u32,
}

impl DeadFilter {
    /// Every dead delivery, up to `limit`.
    pub fn all(limit: u32) -> Self {
        DeadFilter {
            limit,
            ..DeadFilter::default()
        }
    }

    /// The error text to match as an SQL `LIKE` pattern, wildcards in it escaped with `\`.
    pub(crate) fn error_pattern(&self) -> Option<String> {
        self.error_contains.as_ref().map(|text| {
            let escaped = text
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
    }
}

/// Where the database's Keel schema stands against this build of Keel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaState {
    /// Keel's tables do not exist: the database was never migrated.
    Missing,
    /// Some of this build's migrations are not applied yet.
    Behind {
        /// How many.
        pending: usize,
    },
    /// Every migration of this build is applied.
    Current,
    /// A newer Keel applied migrations this build does not know.
    Newer {
        /// The newest version applied.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
}

/// This process's identity in lease tokens: 8 random bytes drawn at start.
static PROCESS: LazyLock<[u8; 8]> = LazyLock::new(|| fastrand::u64(..).to_be_bytes());

/// A new lease token: this process's identity, then 8 random bytes, so that every claim has
/// its own token and an operator can tell which process holds a lease ([`process_of`]).
pub(crate) fn lease_token() -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&*PROCESS);
    bytes[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// This process's identity as written in [`RelayStatus::process`]: the first 18
/// characters of any lease token it writes (16 hex digits and two dashes).
pub fn this_process() -> String {
    lease_token().to_string()[..18].to_owned()
}

/// One row of a backend's status counts: message, handler, in flight, retrying, pending,
/// dead, oldest pending age in milliseconds.
pub(crate) type Counts = (String, String, i64, i64, i64, i64, Option<i64>);

/// The status per handler from a backend's reads: every subscription (even idle), the
/// counts, the deliveries done in the last minute per handler, and the leases per
/// (handler, process); by message, then handler.
pub(crate) fn merge(
    subscriptions: Vec<(String, String)>,
    counts: Vec<Counts>,
    done: Vec<(String, i64)>,
    leases: Vec<(String, String, i64)>,
) -> Vec<HandlerStatus> {
    let mut handlers: BTreeMap<(String, String), HandlerStatus> = BTreeMap::new();
    let blank = |message: &str, handler: &str| HandlerStatus {
        message: message.to_owned(),
        handler: handler.to_owned(),
        ..HandlerStatus::default()
    };
    for (message, handler) in subscriptions {
        let status = blank(&message, &handler);
        handlers.entry((message, handler)).or_insert(status);
    }
    for (message, handler, in_flight, retrying, pending, dead, oldest) in counts {
        let status = handlers
            .entry((message.clone(), handler.clone()))
            .or_insert_with(|| blank(&message, &handler));
        status.in_flight += in_flight;
        status.retrying += retrying;
        status.pending += pending;
        status.dead += dead;
        status.oldest_pending_ms = status.oldest_pending_ms.max(oldest);
    }
    // Handler names are unique per database (the registry and the subscriptions refuse a
    // clash), so the done log and the leases, which name only the handler, attach by name.
    for (handler, count) in done {
        match handlers.values_mut().find(|s| s.handler == handler) {
            Some(status) => status.done_last_minute += count,
            None => {
                let mut status = blank("", &handler);
                status.done_last_minute = count;
                handlers.insert((String::new(), handler), status);
            }
        }
    }
    for (handler, process, deliveries) in leases {
        if let Some(status) = handlers.values_mut().find(|s| s.handler == handler) {
            status.leases.push(LeaseHolder {
                process,
                deliveries,
            });
        }
    }
    handlers.into_values().collect()
}

/// This machine's host name, as relays report it (`HOSTNAME`, else the kernel's).
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}
