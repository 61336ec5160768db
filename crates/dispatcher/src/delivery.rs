//! One attempt of one delivery: run the handler, then record the outcome.

use std::sync::Arc;

use keel_orchestrator::Error;
use keel_orchestrator::outbox::now_millis;

use crate::store::{self, Claim, Next};
use crate::{Dispatcher, HandlerContext};

/// Runs the handler of a claimed delivery and records the outcome. Never panics; every
/// failure ends in the delivery's row (retry scheduled, or dead letter).
pub(crate) async fn execute(dispatcher: Dispatcher, claim: Claim) {
    let db = dispatcher.database().clone();

    let envelope = match &claim.event {
        Ok(envelope) => envelope.clone(),
        Err(reason) => {
            let error = format!("event {} cannot be read: {reason}", claim.event_id);
            return finish_failed(&dispatcher, &claim, error, true).await;
        }
    };
    let Some(handler) = dispatcher
        .registry()
        .handler(&envelope.name, &claim.handler)
        .cloned()
    else {
        let error = format!(
            "no handler named `{}` for event `{}` is registered in this process (renamed or \
             removed?); register it, then retry this entry from the dead letter",
            claim.handler, envelope.name
        );
        return finish_failed(&dispatcher, &claim, error, true).await;
    };

    let timeout = dispatcher.options().handler_timeout;
    let mut ctx = HandlerContext::new(
        dispatcher.clone(),
        envelope.clone(),
        handler.name(),
        claim.attempt,
    );
    let call = handler.erased().clone();
    let event = Arc::clone(&envelope);
    // A task of its own per attempt: a panicking handler fails this attempt only.
    let joined = tokio::spawn(async move {
        let outcome = tokio::time::timeout(timeout, call.call(&event, &mut ctx)).await;
        (outcome, ctx.processed())
    })
    .await;

    let (error, retryable) = match joined {
        Ok((Ok(Ok(())), processed)) | Ok((Ok(Err(Error::AlreadyProcessed { .. })), processed)) => {
            if !processed
                && let Err(error) = store::mark_done(&db, &claim.event_id, &claim.handler).await
            {
                tracing::warn!(
                    handler = %claim.handler, event_id = %claim.event_id, %error,
                    "handled, but marking the delivery done failed; it will be redelivered \
                     when its lease expires"
                );
            }
            tracing::debug!(handler = %claim.handler, event_id = %claim.event_id, "handled");
            return;
        }
        Ok((Ok(Err(error)), true)) => {
            tracing::warn!(
                handler = %claim.handler, event_id = %claim.event_id, %error,
                "handler failed after committing its unit of work; the delivery stays done"
            );
            return;
        }
        Ok((Ok(Err(error)), false)) => {
            let permanent = matches!(
                error,
                Error::Rejected(_) | Error::SecondHandlerUnitOfWork { .. }
            );
            (error.to_string(), !permanent)
        }
        Ok((Err(_elapsed), _)) => (
            format!("handler timed out after {} ms", timeout.as_millis()),
            true,
        ),
        Err(join) if join.is_panic() => (
            format!("handler panicked: {}", panic_message(join.into_panic())),
            true,
        ),
        Err(_) => {
            tracing::warn!(handler = %claim.handler, "delivery cancelled (runtime shutting down)");
            return;
        }
    };
    finish_failed(&dispatcher, &claim, error, !retryable).await
}

async fn finish_failed(dispatcher: &Dispatcher, claim: &Claim, error: String, permanent: bool) {
    let policy = dispatcher
        .registry()
        .handlers()
        .find(|h| h.name() == claim.handler)
        .map(|h| h.retry_policy().clone())
        .unwrap_or_else(crate::Handler::default_retry);
    let next = if permanent || !policy.allows_another_after(claim.attempt) {
        tracing::error!(
            handler = %claim.handler, event_id = %claim.event_id, attempt = claim.attempt,
            %error, "delivery failed; moved to the dead letter"
        );
        Next::Dead
    } else {
        let delay = policy.jittered_delay_before(claim.attempt + 1);
        tracing::warn!(
            handler = %claim.handler, event_id = %claim.event_id, attempt = claim.attempt,
            %error, retry_in_ms = delay.as_millis() as u64, "delivery failed; retrying"
        );
        Next::RetryAt(now_millis() + delay.as_millis() as i64)
    };
    let db = dispatcher.database().clone();
    match store::record_failure(&db, claim, &error, next).await {
        Ok(()) => dispatcher.wake_relay(),
        Err(failure) => tracing::warn!(
            handler = %claim.handler, event_id = %claim.event_id, %failure,
            "could not record the failed attempt; the delivery is retried when its lease expires"
        ),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}
