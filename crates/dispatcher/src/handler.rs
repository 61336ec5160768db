//! Handlers: what they look like, and how they are stored without their event type.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use keel_domain::{Command, DomainEvent, Envelope};
use keel_orchestrator::{Backend, Error, RetryPolicy};

use crate::HandlerContext;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

mod erased;
pub(crate) use erased::ErasedHandler;
use erased::{BatchHandler, OneAtATime, Undecoded};

mod sealed {
    pub trait Sealed {}
    impl<B: keel_orchestrator::Backend> Sealed for crate::HandlerContext<B> {}
}

/// What a handler receives besides its message: a [`HandlerContext`], and nothing else.
///
/// Sealed; it exists so that a handler written to take anything else (a `Tx`, above all)
/// is refused with the rule it breaks rather than a bare signature mismatch.
#[diagnostic::on_unimplemented(
    message = "a handler cannot take `{Self}`: handlers never receive a `Tx`",
    label = "expected `&mut HandlerContext<_>` here",
    note = "handlers run after the caller's transaction has committed; a handler that writes \
            opens its own with `ctx.unit_of_work(async |tx| {{ … }})`",
    note = "a handler is `async fn(&Event, &mut HandlerContext<Backend>) -> Result<(), keel::Error>`"
)]
pub trait HandlerArg: sealed::Sealed + Send + 'static {
    /// The backend of the context.
    type Backend: Backend;

    /// The context itself.
    #[doc(hidden)]
    fn from_context(ctx: &mut HandlerContext<Self::Backend>) -> &mut Self;
}

impl<B: Backend> HandlerArg for HandlerContext<B> {
    type Backend = B;

    fn from_context(ctx: &mut HandlerContext<B>) -> &mut Self {
        ctx
    }
}

/// The call of a handler for one pair of borrows; names the future so it can be required
/// `Send`. Implemented for every suitable function; never implement it yourself.
pub trait HandlerCall<'a, E: ?Sized + 'a, C: 'a>:
    Fn(&'a E, &'a mut C) -> <Self as HandlerCall<'a, E, C>>::Fut
{
    /// The future one call returns.
    type Fut: Future<Output = Result<(), Error>> + Send + 'a;
}

impl<'a, E: ?Sized + 'a, C: 'a, F, Fut> HandlerCall<'a, E, C> for F
where
    F: Fn(&'a E, &'a mut C) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'a,
{
    type Fut = Fut;
}

/// A function that handles messages of type `E` on backend `B`:
/// `async fn(&E, &mut HandlerContext<B>) -> Result<(), keel::Error>`.
///
/// A handler never receives a transaction: the unit of work that recorded the event has
/// committed before the handler runs. A handler that writes opens its own unit of work
/// with [`HandlerContext::unit_of_work`]. (`C` is the handler's second parameter, always
/// `HandlerContext<B>`; it is a parameter only so that a wrong one is reported clearly.)
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler for `{E}`",
    label = "expected `async fn(&{E}, &mut HandlerContext) -> Result<(), keel::Error>`",
    note = "handlers never receive a `Tx`: they run after the caller's transaction has committed; \
            open your own with `ctx.unit_of_work(async |tx| {{ … }})`"
)]
pub trait HandlerFn<E: ?Sized, B: Backend, C = HandlerContext<B>>: Send + Sync + 'static {
    /// Runs the handler.
    fn call<'a>(
        &'a self,
        event: &'a E,
        ctx: &'a mut HandlerContext<B>,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

impl<E: ?Sized, B: Backend, C, F> HandlerFn<E, B, C> for F
where
    C: HandlerArg<Backend = B>,
    F: for<'a> HandlerCall<'a, E, C> + Send + Sync + 'static,
{
    fn call<'a>(
        &'a self,
        event: &'a E,
        ctx: &'a mut HandlerContext<B>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self(event, C::from_context(ctx)))
    }
}

/// What a handler handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    /// One event at a time; an event may have many handlers.
    Event,
    /// One command at a time; a command has exactly one handler.
    Command,
    /// Up to this many commands of one ordering key at a time, in one unit of work.
    Batch(usize),
}

/// One handler of one event type, with its name and retry policy.
///
/// ```
/// # mod keel { pub use keel_dispatcher::{Handler, HandlerContext}; pub use keel_domain::DomainEvent; pub use keel_orchestrator::{Error, RetryPolicy}; }
/// use keel::{Handler, HandlerContext};
/// use keel::DomainEvent;
/// use keel::{Error, RetryPolicy};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct PostLiked { post_id: i64 }
/// # impl DomainEvent for PostLiked { const NAME: &'static str = "post.liked.v1";
/// #   const AGGREGATE_TYPE: &'static str = "Post";
/// #   fn aggregate_id(&self) -> String { self.post_id.to_string() } }
///
/// async fn count_like(event: &PostLiked, ctx: &mut HandlerContext<sqlx::Sqlite>) -> Result<(), Error> {
///     Ok(())
/// }
///
/// let handler = Handler::new::<PostLiked, _>("count_like", count_like)
///     .retry(RetryPolicy::default().max_attempts(10));
/// assert_eq!(handler.event(), "post.liked.v1");
/// ```
pub struct Handler<B: Backend> {
    name: &'static str,
    event: &'static str,
    kind: HandlerKind,
    ordered: bool,
    retry: RetryPolicy,
    call: Arc<dyn ErasedHandler<B>>,
}

impl<B: Backend> Clone for Handler<B> {
    fn clone(&self) -> Self {
        Handler {
            name: self.name,
            event: self.event,
            kind: self.kind,
            ordered: self.ordered,
            retry: self.retry.clone(),
            call: self.call.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Handler<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("name", &self.name)
            .field("event", &self.event)
            .field("kind", &self.kind)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The default retry policy of handlers: 5 attempts, 100 ms, ×2, at most 5 s, jitter 0.5.
/// Handlers often call other systems, so they wait longer than units of work do.
pub(crate) fn default_retry() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(5)
        .base_delay(std::time::Duration::from_millis(100))
        .max_delay(std::time::Duration::from_secs(5))
}

impl<B: Backend> Handler<B> {
    /// The default retry policy of handlers: 5 attempts, 100 ms, ×2, at most 5 s, jitter 0.5.
    /// Handlers often call other systems, so they wait longer than units of work do.
    pub fn default_retry() -> RetryPolicy {
        default_retry()
    }

    /// A handler named `name` reacting to events of type `E`.
    pub fn new<E: DomainEvent, C: 'static>(
        name: &'static str,
        handler: impl HandlerFn<E, B, C>,
    ) -> Self {
        Self::from_erased(
            name,
            E::NAME,
            HandlerKind::Event,
            OneAtATime {
                handler,
                decode: |e: &Envelope| e.decode::<E>(),
                context: PhantomData,
            },
        )
    }

    /// A handler named `name` of the message named `message`, receiving its envelope as
    /// stored, undecoded: `async fn(&Envelope, &mut HandlerContext) -> Result<(), keel::Error>`.
    /// For code that passes messages on (a forwarder to a broker, a bridge); business
    /// handlers take their typed event ([`Handler::new`]).
    pub fn envelope<X: 'static>(
        name: &'static str,
        message: &'static str,
        handler: impl HandlerFn<Envelope, B, X>,
    ) -> Self {
        Self::from_erased(
            name,
            message,
            HandlerKind::Event,
            Undecoded {
                handler,
                context: PhantomData,
            },
        )
    }

    /// The handler named `name` of the command named `command`, receiving its envelope as
    /// stored, undecoded; it is the command's one handler, and honours its ordering key.
    /// For code that passes commands on (a forwarder to a broker); business handlers take
    /// their typed command ([`Handler::command`]).
    pub fn command_envelope<X: 'static>(
        name: &'static str,
        command: &'static str,
        handler: impl HandlerFn<Envelope, B, X>,
    ) -> Self {
        Self::from_erased(
            name,
            command,
            HandlerKind::Command,
            Undecoded {
                handler,
                context: PhantomData,
            },
        )
    }

    /// The handler named `name` of commands of type `C`, one command at a time:
    /// `async fn(&C, &mut HandlerContext) -> Result<(), keel::Error>`.
    pub fn command<C: Command, X: 'static>(
        name: &'static str,
        handler: impl HandlerFn<C, B, X>,
    ) -> Self {
        Self::from_erased(
            name,
            C::NAME,
            HandlerKind::Command,
            OneAtATime {
                handler,
                decode: |e: &Envelope| e.decode_command::<C>(),
                context: PhantomData,
            },
        )
        .ordered(C::ORDERED)
    }

    /// The handler named `name` of commands of type `C`, taking up to `max` (at most 1,000)
    /// commands of one ordering key at a time, to apply them in one unit of work:
    /// `async fn(&[C], &mut HandlerContext) -> Result<(), keel::Error>`.
    pub fn command_batch<C: Command, X: 'static>(
        name: &'static str,
        max: usize,
        handler: impl HandlerFn<[C], B, X>,
    ) -> Self {
        // Capped so that a batch's keys always fit one statement's parameters.
        let kind = HandlerKind::Batch(max.clamp(1, 1_000));
        Self::from_erased(
            name,
            C::NAME,
            kind,
            BatchHandler {
                handler,
                command: PhantomData::<fn(C) -> X>,
            },
        )
        .ordered(C::ORDERED)
    }

    fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    fn from_erased(
        name: &'static str,
        event: &'static str,
        kind: HandlerKind,
        call: impl ErasedHandler<B> + 'static,
    ) -> Self {
        Handler {
            name,
            event,
            ordered: kind != HandlerKind::Event,
            kind,
            retry: Self::default_retry(),
            call: Arc::new(call),
        }
    }

    /// What this handler handles.
    pub fn kind(&self) -> HandlerKind {
        self.kind
    }

    /// Whether the commands it handles run in their key's order
    /// ([`Command::ORDERED`]), not only one at a time per key; `false` for an event
    /// handler, `true` for an undecoded command handler (its command's type is unknown).
    pub fn keeps_key_order(&self) -> bool {
        self.ordered
    }

    /// How many messages one call takes at most.
    pub fn batch_size(&self) -> usize {
        match self.kind {
            HandlerKind::Batch(max) => max,
            HandlerKind::Event | HandlerKind::Command => 1,
        }
    }

    /// Sets how failed deliveries are retried.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The handler's name, unique per event.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The name of the event (or command) it handles.
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// Its retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    pub(crate) fn erased(&self) -> &Arc<dyn ErasedHandler<B>> {
        &self.call
    }
}
