//! The relay: delivers what the fast path did not (a crash, a restart, retries due,
//! events written by producers that do not know the handlers).
//!
//! It claims due deliveries in batches, each claim a short transaction that leases the
//! rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so any number of relays, in any number of
//! processes, share the work without ever running one (event, handler) twice at the same
//! time while its lease holds. Claims select by due time, not by position in the table: a
//! row committed late (a transaction that got a lower id but committed after a higher one)
//! is claimed like any other, never skipped (under a backlog, within 100 ms: see
//! [`crate::cursor`]). An idle relay sleeps until a PostgreSQL `NOTIFY`, a local wake-up
//! (a retry was scheduled) or its poll interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_orchestrator::Backend;
use keel_orchestrator::operations::{HEARTBEAT, host_name, this_process};
use keel_orchestrator::outbox::Group;
use keel_orchestrator::telemetry;
use tokio::sync::watch;

use crate::Dispatcher;
use crate::cursor::ClaimCursor;

/// When a worker stops on its own, like Messenger's `--limit` and `--time-limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Stop after taking this many messages (deliveries).
    pub messages: Option<u64>,
    /// Stop after running this long.
    pub duration: Option<std::time::Duration>,
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerReport {
    /// Messages (deliveries) taken and run to their end.
    pub messages: u64,
    /// How long it ran.
    pub elapsed: std::time::Duration,
}

pub(crate) async fn run<B: Backend>(
    dispatcher: Dispatcher<B>,
    stop: watch::Receiver<bool>,
    limits: WorkerLimits,
) -> WorkerReport {
    let started = Instant::now();
    let db = dispatcher.database().clone();
    if !subscribe(&dispatcher, stop.clone()).await {
        return WorkerReport {
            messages: 0,
            elapsed: started.elapsed(),
        };
    }
    let heartbeat = tokio::spawn(heartbeat(db.clone(), stop.clone()));
    if B::NOTIFIES {
        let (wake, stop) = (dispatcher.wake_handle(), stop.clone());
        tokio::spawn(async move { B::listen(&db, &|| wake.wake(), stop).await });
    }
    // Claims are bounded by the server's work per row, not by round trips: several
    // claim loops keep both the server's cores busy. A message limit is counted exactly
    // by one loop. SQLite has one writer, and commands are claimed key by key: one loop.
    let handles_commands = dispatcher
        .registry()
        .handlers()
        .any(|h| h.kind() != crate::HandlerKind::Event);
    let loops = if limits.messages.is_some() || B::ONE_WRITER || handles_commands {
        1
    } else {
        dispatcher.options().claimers
    };
    tracing::info!(backend = B::NAME, loops, "relay started");
    let taken = Arc::new(AtomicU64::new(0));
    let cursor = Arc::new(ClaimCursor::default());
    let mut tasks = Vec::with_capacity(loops);
    for n in 0..loops {
        let (dispatcher, stop, taken) = (dispatcher.clone(), stop.clone(), taken.clone());
        let first = n == 0;
        tasks.push(tokio::spawn(claim_loop(
            dispatcher,
            stop,
            limits,
            taken,
            cursor.clone(),
            first,
            first && handles_commands,
        )));
    }
    for task in tasks {
        let _ = task.await;
    }
    // Stopped cleanly: no longer listed among the relays (another relay of this process,
    // if any, lists it again at its next beat).
    heartbeat.abort();
    if let Err(error) = B::forget_relay(dispatcher.database(), &this_process()).await {
        tracing::debug!(%error, "could not remove this relay from the relays' list");
    }
    // Graceful shutdown: stop claiming; what was claimed finishes (`Dispatcher::shutdown`
    // and `Dispatcher::run_worker` wait for it).
    let messages = taken.load(Ordering::Relaxed);
    tracing::info!(messages, "relay stopped");
    WorkerReport {
        messages,
        elapsed: started.elapsed(),
    }
}

/// Records this relay's handlers as subscriptions before it claims anything, so that every
/// outbox write from then on, whichever process makes it, creates their deliveries. Retries
/// until the database answers; `false` if stopped first.
async fn subscribe<B: Backend>(
    dispatcher: &Dispatcher<B>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let subscriptions: Vec<(&str, &str)> = dispatcher
        .registry()
        .handlers()
        .map(|h| (h.event(), h.name()))
        .collect();
    if subscriptions.is_empty() {
        return true;
    }
    let db = dispatcher.database();
    let mut warned = false;
    loop {
        if *stop.borrow() {
            return false;
        }
        match B::subscribe(db, &subscriptions).await {
            Ok(()) => return true,
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "relay cannot record its subscriptions; retrying");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return false,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

/// Reports every [`HEARTBEAT`] that this process runs a relay, so that an operator can tell
/// which process holds a lease (`keel status`), and at each beat sets the backlog gauges
/// from the same read as `keel status`. Best effort: a failed report is retried at
/// the next beat. Ends with the relay.
async fn heartbeat<B: Backend>(
    db: keel_orchestrator::Database<B>,
    mut stop: watch::Receiver<bool>,
) {
    let (process, host, pid) = (this_process(), host_name(), std::process::id());
    loop {
        if let Err(error) = B::heartbeat(&db, &process, &host, pid).await {
            tracing::debug!(%error, "relay heartbeat failed");
        }
        match B::status(&db).await {
            Ok(status) => keel_orchestrator::telemetry::record_status(&status),
            Err(error) => tracing::debug!(%error, "could not read the status for the gauges"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// One claim loop of a relay; the first one purges old deliveries and, if the relay
/// handles commands, claims ordering keys.
async fn claim_loop<B: Backend>(
    dispatcher: Dispatcher<B>,
    mut stop: watch::Receiver<bool>,
    limits: WorkerLimits,
    counter: Arc<AtomicU64>,
    cursor: Arc<ClaimCursor>,
    purges: bool,
    claims_keys: bool,
) {
    let started = Instant::now();
    let options = dispatcher.options().clone();
    let db = dispatcher.database().clone();
    let wake = dispatcher.wake_handle();
    let names = dispatcher.registry().names();
    let mut last_purge = Instant::now();
    let mut last_route: Option<Instant> = None;
    let mut failing_since: Option<Instant> = None;
    let mut pace = Pace::new(dispatcher.deliveries_ended());
    loop {
        let seen = wake.seen(purges);
        let taken = counter.load(Ordering::Relaxed);
        let out_of_time = limits.duration.is_some_and(|d| started.elapsed() >= d);
        let out_of_messages = limits.messages.is_some_and(|n| taken >= n);
        if *stop.borrow() || out_of_time || out_of_messages {
            break;
        }
        let left = limits
            .messages
            .map_or(u32::MAX, |n| (n - taken).min(u32::MAX as u64) as u32);
        let round = async {
            let registry = dispatcher.registry();
            // Events written where no handler or subscription existed are rare: the first
            // loop routes them once per poll interval, and again at once after a full batch.
            let mut more_to_route = false;
            if purges && last_route.is_none_or(|at| at.elapsed() >= options.poll_interval) {
                let handlers_for = |name: &str| {
                    registry
                        .handlers_for(name)
                        .iter()
                        .map(|h| h.name())
                        .collect()
                };
                let routed = B::route_unrouted(&db, options.batch_size, &handlers_for).await?;
                more_to_route = routed >= options.batch_size as usize;
                last_route = (!more_to_route).then(Instant::now);
            }
            let worth = dispatcher.claim_worth();
            let held = wake.held_back_state();
            let room = dispatcher.claim_room().min(left);
            if room < worth.min(left) {
                wake.held_back();
                // A delivery that ended before the line above saw nothing held back.
                let freed = dispatcher.claim_room().min(left) >= worth.min(left);
                return Ok::<_, keel_orchestrator::Error>((more_to_route || freed, 0));
            }
            let limit = room.min(options.batch_size);
            let lease = options.lease_duration();
            let keyed = if claims_keys {
                let batch_size = |handler: &str| {
                    registry
                        .handlers()
                        .find(|h| h.name() == handler)
                        .map_or(1, |h| h.batch_size())
                };
                let max_batch = registry
                    .handlers()
                    .map(|h| h.batch_size())
                    .max()
                    .unwrap_or(1);
                B::claim_keyed(&db, limit, lease, &names, &batch_size, max_batch).await?
            } else {
                Vec::new()
            };
            let room = room.saturating_sub(keyed.iter().map(|g| g.claims.len() as u32).sum());
            let limit = room.min(dispatcher.claim_size());
            let mut unkeyed = Vec::new();
            if limit > 0 {
                let claiming = Instant::now();
                unkeyed = cursor.claim(&db, limit, lease, &names).await?;
                pace.claimed(&dispatcher, claiming.elapsed());
            }
            let full = limit > 0 && unkeyed.len() as u32 == limit;
            if limit == 0 || full {
                wake.held_back();
            } else {
                wake.claimed_all_due(held);
            }
            telemetry::relay_claim(keyed.len() + unkeyed.len());
            let unkeyed = unkeyed.into_iter().map(Group::one);
            let claimed = keyed.into_iter().map(|g| (g, true));
            let mut count = 0;
            for (group, keyed) in claimed.chain(unkeyed.map(|g| (g, false))) {
                count += group.claims.len() as u64;
                let ended = dispatcher.clone();
                dispatcher.spawn_delivery(group, move || ended.room_freed(keyed));
            }
            Ok((full || more_to_route, count))
        }
        .await;
        let busy = match round {
            Ok((busy, count)) => {
                counter.fetch_add(count, Ordering::Relaxed);
                if busy {
                    // More is due: wake the sibling loops to claim alongside.
                    wake.backlog();
                }
                if let Some(since) = failing_since.take() {
                    dispatcher.set_relay_failing(false);
                    tracing::info!(
                        down_for_ms = since.elapsed().as_millis() as u64,
                        "relay reconnected"
                    );
                }
                busy
            }
            Err(error) => {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    dispatcher.set_relay_failing(true);
                    tracing::warn!(%error, "relay cannot reach the database; retrying");
                }
                false
            }
        };
        if (options.retention.is_some() || options.dead_retention.is_some())
            && purges
            && last_purge.elapsed() >= options.purge_every
            && failing_since.is_none()
        {
            last_purge = Instant::now();
            match B::purge(
                &db,
                options.retention,
                options.dead_retention,
                options.purge_batch,
            )
            .await
            {
                Ok(0) => {}
                Ok(rows) => tracing::debug!(rows, "purged finished and expired dead deliveries"),
                Err(error) => tracing::warn!(%error, "purge failed"),
            }
        }
        if busy {
            continue;
        }
        let nap = match limits.duration {
            Some(d) => options
                .poll_interval
                .min(d.saturating_sub(started.elapsed())),
            None => options.poll_interval,
        };
        tokio::select! {
            _ = stop.changed() => {}
            _ = wake.sleep(purges, seen, nap) => {}
        }
    }
    // The other loops sleep until a backlog: woken, they see the time limit too.
    if purges {
        wake.backlog();
    }
}

/// How fast this process gets through its deliveries and how long a claim takes, measured
/// by a claim loop to size the relay's claim buffer ([`Dispatcher::pace_buffer`]).
struct Pace {
    since: Instant,
    ended: u64,
    ended_per_sec: f64,
    claim_secs: f64,
}

impl Pace {
    /// Rates are measured over at least this long.
    const SAMPLE: Duration = Duration::from_millis(20);

    fn new(ended: u64) -> Self {
        Pace {
            since: Instant::now(),
            ended,
            ended_per_sec: 0.0,
            claim_secs: 0.0,
        }
    }

    /// A claim took `took`: updates the averages, then the buffer.
    fn claimed<B: Backend>(&mut self, dispatcher: &Dispatcher<B>, took: Duration) {
        self.claim_secs = 0.8 * self.claim_secs + 0.2 * took.as_secs_f64();
        let elapsed = self.since.elapsed();
        if elapsed >= Self::SAMPLE {
            let ended = dispatcher.deliveries_ended();
            let rate = ended.saturating_sub(self.ended) as f64 / elapsed.as_secs_f64();
            self.ended_per_sec = 0.5 * self.ended_per_sec + 0.5 * rate;
            (self.since, self.ended) = (Instant::now(), ended);
        }
        dispatcher.pace_buffer(self.ended_per_sec, self.claim_secs);
    }
}
