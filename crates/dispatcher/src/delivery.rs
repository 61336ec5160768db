//! One attempt of one delivery (or of one batch of commands): run the handler, then
//! record the outcome of every delivery in it.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use keel_orchestrator::outbox::{Claim, Group, Next};
use keel_orchestrator::telemetry::{self, Outcome};
use keel_orchestrator::{Backend, Error};
use tokio::sync::OwnedSemaphorePermit;

use crate::{Dispatcher, HandlerContext};

/// Runs the handler of a claimed group and records the outcome. Never panics; every
/// failure ends in the deliveries' rows (retry scheduled, or dead letter).
///
/// `permit` is this delivery's slot among the deliveries running in the process; it is
/// given back as soon as the handler has returned.
pub(crate) async fn execute<B: Backend>(
    dispatcher: Dispatcher<B>,
    group: Group,
    permit: OwnedSemaphorePermit,
) {
    let key = group.key.clone();
    let token = group.claims.first().map(|c| c.token);
    run(&dispatcher, group, permit).await;
    if let (Some(key), Some(token)) = (key, token) {
        let db = dispatcher.database().clone();
        if let Err(error) = Box::pin(B::release_key(&db, &key, token)).await {
            tracing::warn!(%key, %error, "could not release the ordering key; it frees when its lease expires");
        }
    }
}

/// Gives back the leases of a group that was never started (its process is stopping), and
/// its key's.
pub(crate) async fn give_back<B: Backend>(dispatcher: &Dispatcher<B>, group: Group) {
    let db = dispatcher.database().clone();
    if let Err(error) = Box::pin(B::release(&db, &group.claims)).await {
        tracing::debug!(%error, "could not give back unstarted deliveries; they wait for their lease");
    }
    if let (Some(key), Some(claim)) = (&group.key, group.claims.first()) {
        let _ = Box::pin(B::release_key(&db, key, claim.token)).await;
    }
    tracing::debug!(count = group.claims.len(), "gave back unstarted deliveries");
}

async fn run<B: Backend>(dispatcher: &Dispatcher<B>, group: Group, permit: OwnedSemaphorePermit) {
    let started = Instant::now();
    let keyed = group.key.is_some();
    // A group that waited long for a delivery slot renews its leases first; deliveries
    // whose lease was taken over meanwhile do not run here.
    let lease = dispatcher.options().lease_duration();
    let waited = group
        .claims
        .first()
        .map(|c| c.claimed_at.elapsed())
        .unwrap_or_default();
    let group_claims = if waited > lease / 4 {
        let db = dispatcher.database().clone();
        match Box::pin(B::renew(&db, &group.claims, group.key.as_deref(), lease)).await {
            Ok(kept) => group
                .claims
                .into_iter()
                .zip(kept)
                .filter(|(_, kept)| *kept)
                .map(|(claim, _)| claim)
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "could not renew leases; leaving the deliveries to their lease expiry");
                return;
            }
        }
    } else {
        group.claims
    };
    // A delivery whose event cannot be read is dead on its own; the rest go on.
    let mut claims = Vec::with_capacity(group_claims.len());
    for claim in group_claims {
        match &claim.event {
            Ok(_) => claims.push(claim),
            Err(reason) => {
                let error = format!("event {} cannot be read: {reason}", claim.event_id);
                finish_failed(dispatcher, &[claim], error, Retry::Never, started).await;
            }
        }
    }
    let Some(first) = claims.first() else { return };
    let envelopes: Vec<_> = claims
        .iter()
        .filter_map(|c| c.event.as_ref().ok().cloned())
        .collect();
    let Some(handler) = dispatcher
        .registry()
        .handler(&envelopes[0].name, &first.handler)
        .cloned()
    else {
        let error = format!(
            "no handler named `{}` for `{}` is registered in this process (renamed or removed?); \
             register it, then retry this entry from the dead letter",
            first.handler, envelopes[0].name
        );
        return finish_failed(dispatcher, &claims, error, Retry::Never, started).await;
    };

    // A command of a batch that does not decode (an older or foreign shape) is dead on its
    // own, with its own error; the rest of the batch runs.
    let undecodable = handler.erased().undecodable(&envelopes);
    let (claims, envelopes) = if undecodable.is_empty() {
        (claims, envelopes)
    } else {
        let mut kept = (Vec::new(), Vec::new());
        let mut bad = undecodable.into_iter().peekable();
        for (at, (claim, envelope)) in claims.into_iter().zip(envelopes).enumerate() {
            match bad.next_if(|(bad_at, _)| *bad_at == at) {
                Some((_, error)) => {
                    finish_failed(dispatcher, &[claim], error, Retry::Never, started).await
                }
                None => {
                    kept.0.push(claim);
                    kept.1.push(envelope);
                }
            }
        }
        kept
    };
    let Some(first) = claims.first() else { return };

    // Claimed more times than its policy allows: its last attempts never recorded an
    // outcome, because the process running them stopped (abort, out of memory, kill).
    // Running it again would likely stop this one too.
    let unfinished = first.run_attempt().saturating_sub(1);
    if unfinished > 0 && !handler.retry_policy().allows_another_after(unfinished) {
        let error = format!(
            "abandoned after {unfinished} attempts that never finished: the process running each \
             of them stopped (crash, abort, out of memory?) before recording an outcome; fix the \
             cause, then retry this entry from the dead letter"
        );
        return finish_failed(dispatcher, &claims, error, Retry::Never, started).await;
    }

    let timeout = dispatcher.options().handler_timeout;
    let mut ctx = HandlerContext::new(
        dispatcher.clone(),
        envelopes.clone(),
        handler.name(),
        first.attempt,
        keyed,
    );
    let call = handler.erased().clone();
    // A panicking handler fails this attempt only: the panic is caught at this future's
    // boundary, and the context it held is dropped with it.
    let joined = AssertUnwindSafe(async move {
        let outcome = tokio::time::timeout(timeout, call.call(&envelopes, &mut ctx)).await;
        // A handler that opened its unit of work, saw it fail, and still returned `Ok`
        // must not have its deliveries marked done without their effects.
        let outcome = match outcome {
            Ok(Ok(())) if ctx.opened() && !ctx.processed() => Ok(Err(Error::external(
                "the handler returned Ok although its unit of work did not commit",
            ))),
            other => other,
        };
        (outcome, ctx.processed())
    })
    .catch_unwind()
    .await;

    let (error, retry) = match joined {
        Ok((Ok(Ok(())), processed)) | Ok((Ok(Err(Error::AlreadyProcessed { .. })), processed)) => {
            if !processed {
                drop(permit);
                let ids: Vec<_> = claims.iter().map(|c| c.event_id).collect();
                if let Err(error) = dispatcher.mark_done(&ids, &first.handler).await {
                    tracing::warn!(
                        handler = %first.handler, %error,
                        "handled, but marking the delivery done failed; it will be redelivered \
                         when its lease expires"
                    );
                }
            }
            telemetry::delivery(
                Cow::Borrowed(handler.name()),
                claims.len(),
                Outcome::Done,
                started.elapsed(),
            );
            tracing::debug!(handler = %first.handler, count = claims.len(), "handled");
            return;
        }
        Ok((Ok(Err(error)), true)) => {
            tracing::warn!(
                handler = %first.handler, %error,
                "handler failed after committing its unit of work; the delivery stays done"
            );
            return;
        }
        Ok((Ok(Err(error)), false)) => {
            let retry = match &error {
                Error::Rejected(_) | Error::SecondHandlerUnitOfWork { .. } => Retry::Never,
                Error::RetryAfter { delay, .. } => Retry::After(*delay),
                _ => Retry::Policy,
            };
            (error.to_string(), retry)
        }
        Ok((Err(_elapsed), _)) => (
            format!("handler timed out after {} ms", timeout.as_millis()),
            Retry::Policy,
        ),
        Err(panic) => (
            format!("handler panicked: {}", panic_message(panic)),
            Retry::Policy,
        ),
    };
    finish_failed(dispatcher, &claims, error, retry, started).await
}

/// What a failed attempt allows next.
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// Nothing: the failure is permanent.
    Never,
    /// Another attempt if the policy allows, after the policy's delay.
    Policy,
    /// Another attempt if the policy allows, after this delay (`Error::RetryAfter`).
    After(std::time::Duration),
}

/// Records a failed attempt of each delivery of a group: retry later, or dead.
/// Boxed: failures are the rare path, and their statements would otherwise make every
/// delivery's task as large as the largest of them.
fn finish_failed<'a, B: Backend>(
    dispatcher: &'a Dispatcher<B>,
    claims: &'a [Claim],
    error: String,
    retry: Retry,
    started: Instant,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let db = dispatcher.database().clone();
        for claim in claims {
            let registered = dispatcher
                .registry()
                .handlers()
                .find(|h| h.name() == claim.handler);
            let policy = registered
                .map(|h| h.retry_policy().clone())
                .unwrap_or_else(crate::handler::default_retry);
            let label = registered.map_or_else(
                || Cow::Owned(claim.handler.clone()),
                |h| Cow::Borrowed(h.name()),
            );
            let permanent = matches!(retry, Retry::Never);
            let next = if permanent || !policy.allows_another_after(claim.run_attempt()) {
                tracing::error!(
                    handler = %claim.handler, event_id = %claim.event_id, attempt = claim.attempt,
                    %error, "delivery failed; moved to the dead letter"
                );
                telemetry::delivery(label, 1, Outcome::Dead, started.elapsed());
                Next::Dead
            } else {
                let delay = match retry {
                    Retry::After(delay) => delay.min(keel_orchestrator::RetryPolicy::LONGEST_DELAY),
                    _ => policy.jittered_delay_before(claim.run_attempt() + 1),
                };
                tracing::warn!(
                    handler = %claim.handler, event_id = %claim.event_id, attempt = claim.attempt,
                    %error, retry_in_ms = delay.as_millis() as u64, "delivery failed; retrying"
                );
                telemetry::delivery(label, 1, Outcome::Retried, started.elapsed());
                Next::RetryIn(delay)
            };
            match B::record_failure(&db, claim, &error, next).await {
                Ok(()) => match next {
                    Next::RetryIn(delay) => dispatcher.wake_relay_in(delay),
                    // A dead keyed delivery lets its key's next one run.
                    Next::Dead => dispatcher.wake_relay(),
                },
                Err(failure) => tracing::warn!(
                    handler = %claim.handler, event_id = %claim.event_id, %failure,
                    "could not record the failed attempt; the delivery is retried when its lease expires"
                ),
            }
        }
    })
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}
