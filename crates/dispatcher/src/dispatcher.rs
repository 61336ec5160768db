//! Delivering released events: the fast path, the relay, and the in-flight count.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_domain::EventId;
use keel_orchestrator::outbox::{Claim, Group};
use keel_orchestrator::{Backend, Database, Error, Release, ensure_outside_unit_of_work};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::marks::Marks;
use crate::registry::Registry;
use crate::relay::{WorkerLimits, WorkerReport};
use crate::routing::RoutingTable;
use crate::running::Running;
use crate::wake::Wake;
use crate::{DeadLetters, DeliveryOptions, Session, delivery, relay};

mod window;

/// The longest retry delay for which the process that scheduled the retry wakes its relay
/// at the due time.
const TIMED_WAKE_MAX: Duration = Duration::from_secs(60);

/// Delivers the events of committed units of work to their handlers.
///
/// Every recorded event is in the outbox, written by the unit of work's own transaction,
/// with one delivery row per handler. Two paths deliver them:
///
/// - the **fast path**: right after a commit, [`Dispatcher::dispatch`] runs the handlers of
///   its events at once, in this process, on deliveries the commit reserved for it (leased);
/// - the **relay** ([`Dispatcher::start_relay`]): a background task that claims due
///   deliveries (retries, deliveries of crashed processes once their lease expired, events
///   written without routing) and runs them.
///
/// Each (event, handler) delivery runs in its own task and succeeds, fails and is retried
/// on its own: one handler's failure never holds up another handler or another event. A
/// failed attempt is recorded and retried per the handler's policy, then moved to the dead
/// letter ([`Dispatcher::dead_letters`]).
///
/// Cheap to clone; clones share the registry, the relay and the in-flight count.
pub struct Dispatcher<B: Backend> {
    inner: Arc<Inner<B>>,
}

impl<B: Backend> Clone for Dispatcher<B> {
    fn clone(&self) -> Self {
        Dispatcher {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<B: Backend> {
    db: Database<B>,
    registry: Registry<B>,
    options: DeliveryOptions,
    running: Running,
    /// Bounds the deliveries running at once in this process, fast path and relay together.
    permits: Arc<Semaphore>,
    wake: Arc<Wake>,
    stop: watch::Sender<bool>,
    relay: Mutex<Option<JoinHandle<WorkerReport>>>,
    /// Whether the relay's last claim failed (the database did not answer).
    relay_failing: AtomicBool,
    /// Claimed deliveries the relay keeps ready beyond the slots (see `claim_room`).
    buffer: AtomicU32,
    marks: Marks,
}

/// How this process's relay is doing ([`Dispatcher::relay_health`]), for a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayHealth {
    /// Not started in this process (only relays of other processes deliver).
    NotStarted,
    /// Running, and its last claim reached the database.
    Running,
    /// Running, but its last claim failed: it retries until the database answers.
    Failing,
    /// Stopped (shut down).
    Stopped,
}

impl<B: Backend> std::fmt::Debug for Dispatcher<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("handlers", &self.inner.registry.len())
            .field("in_flight", &self.inner.running.count())
            .finish()
    }
}

/// Decrements the in-flight count when a delivery ends, however it ends.
struct InFlight<B: Backend>(Arc<Inner<B>>);

impl<B: Backend> Drop for InFlight<B> {
    fn drop(&mut self) {
        self.0.running.end();
    }
}

impl<B: Backend> Dispatcher<B> {
    /// A dispatcher with default [`DeliveryOptions`] delivering to `registry`'s handlers.
    /// The relay is not started: see [`Dispatcher::start_relay`] (`keel::App` starts it).
    pub fn new(db: Database<B>, registry: Registry<B>) -> Self {
        Self::with_options(db, registry, DeliveryOptions::default())
    }

    /// A dispatcher with explicit delivery options.
    pub fn with_options(db: Database<B>, registry: Registry<B>, options: DeliveryOptions) -> Self {
        let permits = Arc::new(Semaphore::new(options.max_in_flight));
        let batch_size = options.batch_size;
        let lease = options.fast_path.then(|| options.lease_duration());
        let wake = Arc::new(Wake::default());
        let routing = Arc::new(RoutingTable::new(&registry, lease, wake.clone()));
        Dispatcher {
            inner: Arc::new(Inner {
                db: db.with_routing(routing),
                registry,
                options,
                running: Running::default(),
                permits,
                wake,
                stop: watch::Sender::new(false),
                relay: Mutex::new(None),
                relay_failing: AtomicBool::new(false),
                buffer: AtomicU32::new(batch_size),
                marks: Marks::new(),
            }),
        }
    }

    /// A session on this dispatcher's database.
    pub fn session(&self) -> Session<'_, B> {
        Session::new(self)
    }

    /// The database handle handlers' units of work run on (it writes delivery rows for
    /// this dispatcher's handlers).
    pub fn database(&self) -> &Database<B> {
        &self.inner.db
    }

    /// The handlers this dispatcher delivers to.
    pub fn registry(&self) -> &Registry<B> {
        &self.inner.registry
    }

    /// The delivery options.
    pub fn options(&self) -> &DeliveryOptions {
        &self.inner.options
    }

    /// The dead letter of this dispatcher's database.
    pub fn dead_letters(&self) -> DeadLetters<B> {
        DeadLetters::new(
            self.inner.db.clone(),
            self.inner.wake.clone(),
            self.inner.options.purge_batch,
        )
    }

    /// Releases the events of a committed unit of work to their handlers and returns the
    /// unit of work's value. The events are already durable (in the outbox); this runs the
    /// handlers at once, in background tasks, on the deliveries the commit reserved for this
    /// process. See [`Dispatcher::wait_idle`].
    ///
    /// Only a [`Committed`](keel_orchestrator::Committed) receipt is accepted. Called from
    /// inside a unit of work (with a receipt smuggled in), it fails at once with
    /// [`Error::InsideUnitOfWork`]: nothing is delivered before the enclosing commit.
    ///
    /// Must be called within a Tokio runtime.
    pub fn dispatch<R: Release>(&self, receipt: R) -> Result<R::Value, Error> {
        ensure_outside_unit_of_work("dispatch events")?;
        let (value, events, lease_token) = receipt.into_parts();
        let Some(token) = lease_token else {
            // Nothing reserved for this process: relays deliver from the outbox.
            return Ok(value);
        };
        for envelope in events {
            let envelope = Arc::new(envelope);
            for handler in self.inner.registry.handlers_for(&envelope.name) {
                let claim = Claim {
                    event_id: envelope.id,
                    event: Ok(envelope.clone()),
                    handler: handler.name().to_owned(),
                    attempt: 1,
                    retried_from: 0,
                    token,
                    claimed_at: std::time::Instant::now(),
                };
                let ended = self.clone();
                self.spawn_delivery(Group::one(claim), move || ended.room_freed(false));
            }
        }
        Ok(value)
    }

    /// Whether a delivery could start now: a slot among the deliveries running in the
    /// process (`DeliveryOptions::max_in_flight`) is free.
    pub(crate) fn has_free_slot(&self) -> bool {
        self.inner.permits.available_permits() > 0
    }

    /// Runs one delivery (or batch) in a task of its own; `done` runs when it ends.
    pub(crate) fn spawn_delivery(&self, group: Group, done: impl FnOnce() + Send + 'static) {
        let Some(first) = group.claims.first() else {
            return done();
        };
        self.inner.running.start();
        let guard = InFlight(self.inner.clone());
        // DEBUG: one span per delivery is the hot path's, not an operator's, level.
        let envelope = first.event.as_ref().ok();
        let span = tracing::debug_span!(
            "deliver",
            handler = %first.handler,
            event_id = %first.event_id,
            attempt = first.attempt,
            count = group.claims.len(),
            correlation_id = envelope.map(|e| tracing::field::display(e.correlation_id)),
            causation_id = envelope
                .and_then(|e| e.causation_id)
                .map(tracing::field::display),
            trace_id = tracing::field::Empty,
        );
        // The handler's span continues the trace that recorded the event (a batch: its
        // first command's).
        if let Some(envelope) = envelope {
            keel_orchestrator::trace::continue_trace(&span, &envelope.headers);
        }
        let permits = self.inner.permits.clone();
        let dispatcher = self.clone();
        let mut stop = self.inner.stop.subscribe();
        tokio::spawn(
            async move {
                // Waiting here holds no connection: a burst of commits queues cheaply. A
                // stopping process gives back what it has not started, for another relay
                // to take at once rather than after the lease.
                let permit = tokio::select! {
                    biased;
                    permit = permits.acquire_owned() => permit.ok(),
                    _ = stop.wait_for(|stopping| *stopping) => None,
                };
                match permit {
                    Some(permit) => delivery::execute(dispatcher, group, permit).await,
                    None => delivery::give_back(&dispatcher, group).await,
                }
                drop(guard);
                done();
            }
            .instrument(span),
        );
    }

    /// Marks deliveries done for a handler that wrote nothing through its context, batched
    /// with the other deliveries ending meanwhile.
    pub(crate) async fn mark_done(
        &self,
        event_ids: &[EventId],
        handler: &str,
    ) -> Result<(), String> {
        let written = self
            .inner
            .marks
            .mark_done(&self.inner.db, event_ids, handler);
        // Waiting for its mark, a delivery no longer holds the relay's claim window.
        self.room_freed(false);
        written.await
    }

    /// Deliveries ended in this process so far.
    pub(crate) fn deliveries_ended(&self) -> u64 {
        self.inner.running.ended()
    }

    /// Removes finished deliveries older than `older_than` (and events left without
    /// deliveries, and ordering keys with nothing pending), in bounded batches; returns the
    /// rows removed. The relay does this
    /// periodically when [`DeliveryOptions::retention`] is set.
    pub async fn purge_delivered(&self, older_than: Duration) -> Result<u64, Error> {
        purge_all(
            &self.inner.db,
            Some(older_than),
            None,
            self.inner.options.purge_batch,
            &mut |_| {},
        )
        .await
    }

    /// How this process's relay is doing: for a service's health check.
    pub fn relay_health(&self) -> RelayHealth {
        let relay = self.inner.relay.lock().unwrap_or_else(|e| e.into_inner());
        match relay.as_ref() {
            None if *self.inner.stop.borrow() => RelayHealth::Stopped,
            None => RelayHealth::NotStarted,
            Some(task) if task.is_finished() => RelayHealth::Stopped,
            Some(_) if self.inner.relay_failing.load(Ordering::Relaxed) => RelayHealth::Failing,
            Some(_) => RelayHealth::Running,
        }
    }

    /// Records whether the relay's last claim reached the database.
    pub(crate) fn set_relay_failing(&self, failing: bool) {
        self.inner.relay_failing.store(failing, Ordering::Relaxed);
    }

    /// Starts the relay in the background, once. Must be called within a Tokio runtime.
    pub fn start_relay(&self) {
        let mut relay = self.inner.relay.lock().unwrap_or_else(|e| e.into_inner());
        if relay.is_none() {
            let stop = self.inner.stop.subscribe();
            let limits = WorkerLimits::default();
            *relay = Some(tokio::spawn(relay::run(self.clone(), stop, limits)));
        }
    }

    /// Runs a worker in the foreground until `limits` are reached or
    /// [`Dispatcher::shutdown`] is called, then waits for what it took to finish. Like a
    /// relay, it delivers events and handles commands.
    ///
    /// Fails at once with [`Error::InsideUnitOfWork`] inside a unit of work: its deliveries
    /// would wait for connections the unit of work holds.
    pub async fn run_worker(&self, limits: WorkerLimits) -> Result<WorkerReport, Error> {
        ensure_outside_unit_of_work("run a worker")?;
        let report = relay::run(self.clone(), self.inner.stop.subscribe(), limits).await;
        self.wait_idle().await;
        Ok(report)
    }

    /// Wakes the relay now (e.g. a retry was scheduled, a dead delivery was retried).
    pub fn wake_relay(&self) {
        self.inner.wake.wake();
    }

    /// Wakes the relay when a retry scheduled `delay` from now is due, so that it runs
    /// then rather than at the next poll. Retries further off than [`TIMED_WAKE_MAX`] are
    /// left to the polls, a small delay beside theirs.
    pub(crate) fn wake_relay_in(&self, delay: Duration) {
        if delay <= TIMED_WAKE_MAX {
            // The database set the due time when it recorded the failure, before this.
            self.inner.wake.wake_in(delay, self.inner.stop.subscribe());
        }
    }

    pub(crate) fn wake_handle(&self) -> Arc<Wake> {
        self.inner.wake.clone()
    }

    /// The number of deliveries running in this process.
    pub fn in_flight(&self) -> usize {
        self.inner.running.count()
    }

    /// Waits until no delivery runs in this process (deliveries due later, in the
    /// outbox, are not waited for: see [`Dispatcher::wait_until_delivered`]).
    pub async fn wait_idle(&self) {
        self.inner.running.until_idle().await;
    }

    /// Waits until every delivery to this process's handlers is done or dead (and every
    /// event routed) and none runs here, or until `timeout`. Returns whether everything was
    /// delivered. Deliveries to other services' handlers are theirs to wait for. Needs a
    /// running relay for retries and for deliveries this process did not commit.
    pub async fn wait_until_delivered(&self, timeout: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        let handlers = self.registry().names();
        loop {
            self.wait_idle().await;
            if !B::any_unfinished(&self.inner.db, &handlers).await? && self.in_flight() == 0 {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the relay and waits for the deliveries running in this process; those claimed
    /// but not started are given back, for another relay to take at once.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let relay = self
            .inner
            .relay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        self.wait_idle().await;
    }
}

/// Purges in batches of `batch` rows until a batch removes nothing; returns the rows
/// removed (see [`Store::purge`](keel_orchestrator::store::Store::purge)).
pub(crate) async fn purge_all<B: Backend>(
    db: &Database<B>,
    done_older_than: Option<Duration>,
    dead_older_than: Option<Duration>,
    batch: u32,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, Error> {
    let mut total = 0;
    loop {
        let removed = B::purge(db, done_older_than, dead_older_than, batch).await?;
        if removed == 0 {
            return Ok(total);
        }
        total += removed;
        progress(total);
    }
}
