//! The relay: delivers what the fast path did not (a crash, a restart, retries due,
//! events written by producers that do not know the handlers).
//!
//! It claims due deliveries in batches, each claim a short transaction that leases the
//! rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so any number of relays, in any number of
//! processes, share the work without ever running one (event, handler) twice at the same
//! time while its lease holds. Claims select by due time, not by position in the table: a
//! row committed late (a transaction that got a lower id but committed after a higher one)
//! is claimed like any other, never skipped. An idle relay sleeps until a PostgreSQL
//! `NOTIFY`, a local wake-up (a retry was scheduled) or its poll interval.

use std::sync::Arc;
use std::time::Instant;

use keel_orchestrator::Backend;
use keel_orchestrator::outbox::{NOTIFY_CHANNEL, now_millis};
use tokio::sync::{Notify, watch};

use crate::{Dispatcher, store};

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

pub(crate) async fn run(
    dispatcher: Dispatcher,
    mut stop: watch::Receiver<bool>,
    limits: WorkerLimits,
) -> WorkerReport {
    let started = Instant::now();
    let mut taken: u64 = 0;
    let options = dispatcher.options().clone();
    let db = dispatcher.database().clone();
    let wake = dispatcher.wake_handle();
    if db.backend() == Backend::Postgres {
        tokio::spawn(listen(
            db.connect_url().to_owned(),
            wake.clone(),
            stop.clone(),
        ));
    }
    let mut last_purge = Instant::now();
    let mut failing_since: Option<Instant> = None;
    tracing::info!(backend = ?db.backend(), "relay started");
    loop {
        let out_of_time = limits.duration.is_some_and(|d| started.elapsed() >= d);
        let out_of_messages = limits.messages.is_some_and(|n| taken >= n);
        if *stop.borrow() || out_of_time || out_of_messages {
            break;
        }
        let left = limits
            .messages
            .map_or(u32::MAX, |n| (n - taken).min(u32::MAX as u64) as u32);
        let round = async {
            store::route_unrouted(&db, dispatcher.registry(), options.batch_size).await?;
            let free = (dispatcher.free_permits() as u32).min(left);
            if free == 0 {
                return Ok::<_, keel_orchestrator::Error>((false, 0));
            }
            let limit = free.min(options.batch_size);
            let lease = options.lease_duration();
            let keyed = store::claim_keyed(&db, dispatcher.registry(), limit, lease).await?;
            let free = free.saturating_sub(keyed.iter().map(|g| g.claims.len() as u32).sum());
            let mut claimed = keyed;
            let limit = free.min(options.batch_size);
            let mut full = false;
            if limit > 0 {
                let claims = store::claim(&db, limit, lease).await?;
                full = claims.len() as u32 == limit;
                claimed.extend(claims.into_iter().map(store::Group::one));
            }
            let mut count = 0;
            for group in claimed {
                count += group.claims.len() as u64;
                let wake = wake.clone();
                dispatcher.spawn_delivery(group, move || wake.notify_one());
            }
            Ok((full, count))
        }
        .await;
        let busy = match round {
            Ok((busy, count)) => {
                taken += count;
                if let Some(since) = failing_since.take() {
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
                    tracing::warn!(%error, "relay cannot reach the database; retrying");
                }
                false
            }
        };
        if let Some(retention) = options.retention
            && last_purge.elapsed() >= options.purge_every
            && failing_since.is_none()
        {
            last_purge = Instant::now();
            let before = now_millis() - retention.as_millis() as i64;
            match store::purge(&db, before, options.purge_batch).await {
                Ok(0) => {}
                Ok(rows) => tracing::debug!(rows, "purged finished deliveries"),
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
            _ = wake.notified() => {}
            _ = tokio::time::sleep(nap) => {}
        }
    }
    // Graceful shutdown: stop claiming; what was claimed finishes (`Dispatcher::shutdown`
    // and `Dispatcher::run_worker` wait for it).
    tracing::info!(messages = taken, "relay stopped");
    WorkerReport {
        messages: taken,
        elapsed: started.elapsed(),
    }
}

/// Wakes the relay on every `NOTIFY keel_outbox`; reconnects when the server restarts.
async fn listen(url: String, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        let connected = async {
            let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = stop.changed() => return,
            listener = connected => match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(%error, "relay listener cannot connect; polling meanwhile");
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        // Anything committed while the listener was down is found by the next poll.
        wake.notify_one();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                notification = listener.recv() => match notification {
                    Ok(_) => wake.notify_one(),
                    Err(error) => {
                        tracing::debug!(%error, "relay listener lost its connection");
                        break;
                    }
                },
            }
        }
    }
}
