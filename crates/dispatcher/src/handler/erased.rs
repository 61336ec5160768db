//! Handlers stored without their message type: what the registry keeps and the delivery
//! calls, one envelope at a time or a batch of commands.

use std::marker::PhantomData;
use std::sync::Arc;

use keel_domain::{Command, Envelope};
use keel_orchestrator::{Backend, Error};

use super::{BoxFuture, HandlerFn};
use crate::HandlerContext;

/// A handler with its message type erased, as the registry stores it. It receives one
/// envelope, or several for a batch handler.
pub(crate) trait ErasedHandler<B: Backend>: Send + Sync {
    fn call<'a>(
        &'a self,
        envelopes: &'a [Arc<Envelope>],
        ctx: &'a mut HandlerContext<B>,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Why each envelope of a batch that does not decode cannot be (by position), so
    /// that it alone is dead-lettered and the rest of its batch runs. A one-at-a-time
    /// handler's single envelope fails on its own anyway.
    fn undecodable(&self, _envelopes: &[Arc<Envelope>]) -> Vec<(usize, String)> {
        Vec::new()
    }
}

/// The one envelope of a handler that takes one at a time.
fn single(envelopes: &[Arc<Envelope>]) -> Result<&Envelope, Error> {
    match envelopes {
        [envelope] => Ok(envelope),
        _ => Err(Error::rejected(std::io::Error::other(format!(
            "a one-at-a-time handler received {} messages",
            envelopes.len()
        )))),
    }
}

/// A handler of one message at a time (an event, or an unbatched command), with the
/// function that turns its envelope back into the message.
pub(super) struct OneAtATime<M, F, C> {
    pub(super) handler: F,
    pub(super) decode: fn(&Envelope) -> Result<M, keel_domain::DecodeError>,
    pub(super) context: PhantomData<fn() -> C>,
}

impl<M: Send + Sync + 'static, B: Backend, C: 'static, F: HandlerFn<M, B, C>> ErasedHandler<B>
    for OneAtATime<M, F, C>
{
    fn call<'a>(
        &'a self,
        envelopes: &'a [Arc<Envelope>],
        ctx: &'a mut HandlerContext<B>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let message = (self.decode)(single(envelopes)?).map_err(Error::rejected)?;
            self.handler.call(&message, ctx).await
        })
    }
}

/// A handler of envelopes as stored, undecoded.
pub(super) struct Undecoded<F, C> {
    pub(super) handler: F,
    pub(super) context: PhantomData<fn() -> C>,
}

impl<B: Backend, C: 'static, F: HandlerFn<Envelope, B, C>> ErasedHandler<B> for Undecoded<F, C> {
    fn call<'a>(
        &'a self,
        envelopes: &'a [Arc<Envelope>],
        ctx: &'a mut HandlerContext<B>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move { self.handler.call(single(envelopes)?, ctx).await })
    }
}

/// A handler of commands in batches, decoded together.
pub(super) struct BatchHandler<C, F, X> {
    pub(super) handler: F,
    pub(super) command: PhantomData<fn(C) -> X>,
}

impl<C: Command, B: Backend, X: 'static, F: HandlerFn<[C], B, X>> ErasedHandler<B>
    for BatchHandler<C, F, X>
{
    fn call<'a>(
        &'a self,
        envelopes: &'a [Arc<Envelope>],
        ctx: &'a mut HandlerContext<B>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let commands = envelopes
                .iter()
                .map(|e| e.decode_command::<C>())
                .collect::<Result<Vec<C>, _>>()
                .map_err(Error::rejected)?;
            self.handler.call(&commands, ctx).await
        })
    }

    fn undecodable(&self, envelopes: &[Arc<Envelope>]) -> Vec<(usize, String)> {
        envelopes
            .iter()
            .enumerate()
            .filter_map(|(at, e)| {
                e.decode_command::<C>()
                    .err()
                    .map(|error| (at, Error::rejected(error).to_string()))
            })
            .collect()
    }
}
