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

pub(crate) async fn run(dispatcher: Dispatcher, mut stop: watch::Receiver<bool>) {
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
        if *stop.borrow() {
            break;
        }
        let round = async {
            store::route_unrouted(&db, dispatcher.registry(), options.batch_size).await?;
            let free = dispatcher.free_permits() as u32;
            if free == 0 {
                return Ok::<_, keel_orchestrator::Error>(false);
            }
            let limit = free.min(options.batch_size);
            let claims = store::claim(&db, limit, options.lease_duration()).await?;
            let full = claims.len() as u32 == limit;
            for claim in claims {
                let wake = wake.clone();
                dispatcher.spawn_delivery(claim, move || wake.notify_one());
            }
            Ok(full)
        }
        .await;
        let busy = match round {
            Ok(busy) => {
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
        tokio::select! {
            _ = stop.changed() => {}
            _ = wake.notified() => {}
            _ = tokio::time::sleep(options.poll_interval) => {}
        }
    }
    // Graceful shutdown: stop claiming; what was claimed finishes (`Dispatcher::shutdown`
    // waits for it).
    tracing::info!("relay stopped");
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
