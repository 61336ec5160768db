//! Which handlers react to which events: collected at link time, or built by hand.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use keel_orchestrator::Backend;

use crate::Handler;
use crate::handler::HandlerKind;

/// A handler registration collected by [`register_handler!`](crate::register_handler).
///
/// It holds a `Handler<B>` for the backend its function is written for, type-erased so
/// that one collection serves both backends; [`Registry::global`] keeps those of its own.
#[doc(hidden)]
#[derive(Debug)]
pub struct HandlerRegistration {
    build: fn() -> Box<dyn Any + Send + Sync>,
}

impl HandlerRegistration {
    /// Used by `register_handler!`.
    #[doc(hidden)]
    pub const fn new(build: fn() -> Box<dyn Any + Send + Sync>) -> Self {
        HandlerRegistration { build }
    }
}

inventory::collect!(HandlerRegistration);

/// A registry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A second handler is registered for a command.
    #[error(
        "command `{command}` already has handler `{existing}`, so `{handler}` cannot be \
         registered: a command has exactly one handler (publish an event for many reactions)"
    )]
    SecondCommandHandler {
        /// The command's name.
        command: &'static str,
        /// The handler registered first.
        existing: &'static str,
        /// The handler refused.
        handler: &'static str,
    },

    /// The same handler name is registered twice for one event.
    #[error(
        "handler `{handler}` is registered twice for event `{event}`; a handler runs once per \
         event: remove one registration, or give the second handler another name"
    )]
    Duplicate {
        /// The handler's name.
        handler: &'static str,
        /// The event's name.
        event: &'static str,
    },

    /// A handler name is already taken by a handler of another message.
    #[error(
        "handler name `{handler}` is already registered for `{existing}`, so it cannot be \
         registered for `{message}` too: a handler's name identifies its deliveries, its retry \
         policy and its batch size, so it names one handler of one message; name them apart \
         (e.g. `{handler}_for_…`)"
    )]
    NameTaken {
        /// The name.
        handler: &'static str,
        /// The message whose handler holds the name.
        existing: &'static str,
        /// The message of the handler refused.
        message: &'static str,
    },
}

/// The handlers of a program, by event name.
///
/// ```
/// # mod keel { pub use keel_dispatcher::{Handler, HandlerContext, Registry}; pub use keel_domain::DomainEvent; pub use keel_orchestrator::Error; }
/// use keel::{Handler, HandlerContext, Registry};
/// # use keel::DomainEvent;
/// # use keel::Error;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct PostLiked { post_id: i64 }
/// # impl DomainEvent for PostLiked { const NAME: &'static str = "post.liked.v1";
/// #   const AGGREGATE_TYPE: &'static str = "Post";
/// #   fn aggregate_id(&self) -> String { self.post_id.to_string() } }
/// async fn count(_: &PostLiked, _: &mut HandlerContext<sqlx::Sqlite>) -> Result<(), Error> {
///     Ok(())
/// }
///
/// let mut registry = Registry::new();
/// registry.register(Handler::new::<PostLiked, _>("count", count)).unwrap();
/// let twice = registry.register(Handler::new::<PostLiked, _>("count", count));
/// assert!(twice.is_err());
/// assert_eq!(registry.handlers_for("post.liked.v1").len(), 1);
/// ```
#[derive(Debug)]
pub struct Registry<B: Backend> {
    by_event: HashMap<&'static str, Vec<Arc<Handler<B>>>>,
}

impl<B: Backend> Default for Registry<B> {
    fn default() -> Self {
        Registry {
            by_event: HashMap::new(),
        }
    }
}

impl<B: Backend> Clone for Registry<B> {
    fn clone(&self) -> Self {
        Registry {
            by_event: self.by_event.clone(),
        }
    }
}

impl<B: Backend> Registry<B> {
    /// An empty registry, to fill with [`Registry::register`] (tests, exact sets).
    pub fn new() -> Self {
        Registry::default()
    }

    /// Every handler for backend `B` registered with
    /// [`register_handler!`](crate::register_handler) in the program, wherever it is
    /// defined.
    pub fn global() -> Result<Self, RegistryError> {
        let mut registry = Registry::new();
        for registration in inventory::iter::<HandlerRegistration> {
            if let Ok(handler) = (registration.build)().downcast::<Handler<B>>() {
                registry.register(*handler)?;
            }
        }
        Ok(registry)
    }

    /// Adds a handler; fails if a handler of that name already handles that event.
    pub fn register(&mut self, handler: Handler<B>) -> Result<&mut Self, RegistryError> {
        let handlers = self.by_event.entry(handler.event()).or_default();
        let is_command = |h: &Handler<B>| h.kind() != HandlerKind::Event;
        if let Some(existing) = handlers
            .iter()
            .find(|h| (is_command(h) || is_command(&handler)) && h.name() != handler.name())
        {
            return Err(RegistryError::SecondCommandHandler {
                command: handler.event(),
                existing: existing.name(),
                handler: handler.name(),
            });
        }
        if handlers.iter().any(|h| h.name() == handler.name()) {
            return Err(RegistryError::Duplicate {
                handler: handler.name(),
                event: handler.event(),
            });
        }
        if let Some(other) = self
            .by_event
            .values()
            .flatten()
            .find(|h| h.name() == handler.name())
        {
            return Err(RegistryError::NameTaken {
                handler: handler.name(),
                existing: other.event(),
                message: handler.event(),
            });
        }
        let handlers = self.by_event.entry(handler.event()).or_default();
        handlers.push(Arc::new(handler));
        Ok(self)
    }

    /// The handler named `handler` of the event named `event`.
    pub fn handler(&self, event: &str, handler: &str) -> Option<&Arc<Handler<B>>> {
        self.handlers_for(event)
            .iter()
            .find(|h| h.name() == handler)
    }

    /// The handlers of the event named `event`.
    pub fn handlers_for(&self, event: &str) -> &[Arc<Handler<B>>] {
        self.by_event.get(event).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The names of every registered handler: the deliveries this process's relay claims.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.handlers().map(|h| h.name()).collect()
    }

    /// Every registered handler.
    pub fn handlers(&self) -> impl Iterator<Item = &Handler<B>> {
        self.by_event.values().flatten().map(|h| h.as_ref())
    }

    /// The number of registered handlers.
    pub fn len(&self) -> usize {
        self.by_event.values().map(Vec::len).sum()
    }

    /// Whether no handler is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Registers a handler where it is defined, for [`Registry::global`].
///
/// ```ignore
/// async fn notify_partner(event: &AssessmentCompleted, ctx: &mut HandlerContext<Postgres>) -> Result<(), keel::Error> {
///     // …
///     Ok(())
/// }
/// keel::register_handler!(AssessmentCompleted => notify_partner);
/// // with a retry policy:
/// keel::register_handler!(AssessmentCompleted => notify_partner, retry = RetryPolicy::default().max_attempts(10));
/// ```
///
/// The handler's name is its path (`my_service::handlers::notify_partner`). The backend
/// is the one of the function's `HandlerContext<B>`; [`Registry::global`] for that backend
/// finds it. A handler generic over the backend is registered once per backend, under one
/// name: `register_handler!(AssessmentCompleted => notify_partner::<sqlx::Postgres>)` and
/// `…::<sqlx::Sqlite>` both register `my_service::handlers::notify_partner`.
#[macro_export]
macro_rules! register_handler {
    ($event:ty => $first:ident $(:: $rest:ident)* $(::<$($backend:ty),+ $(,)?>)?
        $(, retry = $retry:expr)? $(,)?) => {
        const _: () = {
            fn build() -> ::std::boxed::Box<dyn ::core::any::Any + Send + Sync> {
                let handler = $crate::Handler::new::<$event, _>(
                    $crate::register_handler!(@name $first $(:: $rest)*),
                    $first $(:: $rest)* $(::<$($backend),+>)?,
                );
                $( let handler = handler.retry($retry); )?
                ::std::boxed::Box::new(handler)
            }
            $crate::__private::inventory::submit! {
                $crate::HandlerRegistration::new(build)
            }
        };
    };
    // The handler's name: the module and the function's path, without type arguments, so
    // that the instances of a generic handler for each backend share one name.
    (@name $first:ident $(:: $rest:ident)*) => {
        ::core::concat!(
            ::core::module_path!(), "::", ::core::stringify!($first)
            $(, "::", ::core::stringify!($rest))*
        )
    };
}

/// Registers the handler of a command where it is defined, for [`Registry::global`]. A
/// command has exactly one handler.
///
/// ```ignore
/// async fn count_vote(vote: &VoteForPost, ctx: &mut HandlerContext<Postgres>) -> Result<(), keel::Error> { todo!() }
/// keel::register_command_handler!(VoteForPost => count_vote);
///
/// // or, taking up to 100 commands of one ordering key at a time:
/// async fn count_votes(votes: &[VoteForPost], ctx: &mut HandlerContext<Postgres>) -> Result<(), keel::Error> { todo!() }
/// keel::register_command_handler!(VoteForPost => count_votes, batch = 100);
/// ```
#[macro_export]
macro_rules! register_command_handler {
    ($command:ty => $first:ident $(:: $rest:ident)* $(::<$($backend:ty),+ $(,)?>)?
        $(, retry = $retry:expr)? $(,)?) => {
        $crate::register_command_handler!(@build $command, ($first $(:: $rest)*),
            |name| $crate::Handler::command::<$command, _>(
                name, $first $(:: $rest)* $(::<$($backend),+>)?) $(, $retry)?);
    };
    ($command:ty => $first:ident $(:: $rest:ident)* $(::<$($backend:ty),+ $(,)?>)?,
        batch = $max:expr $(, retry = $retry:expr)? $(,)?) => {
        $crate::register_command_handler!(@build $command, ($first $(:: $rest)*),
            |name| $crate::Handler::command_batch::<$command, _>(
                name, $max, $first $(:: $rest)* $(::<$($backend),+>)?) $(, $retry)?);
    };
    (@build $command:ty, ($($path:tt)*), $make:expr $(, $retry:expr)?) => {
        const _: () = {
            fn build() -> ::std::boxed::Box<dyn ::core::any::Any + Send + Sync> {
                let make: fn(&'static str) -> $crate::Handler<_> = $make;
                let handler = make($crate::register_handler!(@name $($path)*));
                $( let handler = handler.retry($retry); )?
                ::std::boxed::Box::new(handler)
            }
            $crate::__private::inventory::submit! {
                $crate::HandlerRegistration::new(build)
            }
        };
    };
}
