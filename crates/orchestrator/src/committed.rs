//! The receipt of a committed unit of work: the only thing that releases its events.

use keel_domain::Envelope;

/// Proof that a unit of work committed, carrying its value and the events it recorded.
///
/// Only a successful commit creates one: the type has no public constructor and its
/// fields are private. The dispatcher accepts nothing else ([`Release`]), so an event
/// cannot be delivered while the transaction that recorded it is still open, or after it
/// rolled back.
///
/// The events are already in the outbox, written in the same transaction: releasing the
/// receipt only lets this process deliver them at once instead of waiting for a relay.
///
/// An application rarely sees a receipt: `keel::Session::unit_of_work` releases the
/// events itself right after commit and returns the value. A receipt appears when
/// [`Database::unit_of_work`](crate::Database::unit_of_work) is called directly; hand it
/// to the dispatcher, or call [`Committed::into_value`] to drop the events knowingly.
#[must_use = "the events of this committed unit of work are not delivered until the receipt \
              is dispatched; use `Session::unit_of_work`, which does it for you, or pass the \
              receipt to `Dispatcher::dispatch`"]
#[derive(Debug)]
pub struct Committed<T> {
    value: T,
    events: Vec<Envelope>,
    lease_token: Option<uuid::Uuid>,
}

/// The receipt of a commit. A free function, not an associated one, so that the compiler
/// never suggests it to code outside this crate.
pub(crate) fn receipt<T>(
    value: T,
    events: Vec<Envelope>,
    lease_token: Option<uuid::Uuid>,
) -> Committed<T> {
    Committed {
        value,
        events,
        lease_token,
    }
}

impl<T> Committed<T> {
    /// The value the unit of work returned.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The events recorded by the attempt that committed, in recording order.
    pub fn events(&self) -> &[Envelope] {
        &self.events
    }

    /// The value, without releasing the events to this process's fast path. The events
    /// are in the outbox: a relay delivers them (after the fast-path lease expires, if this
    /// process had reserved them).
    pub fn into_value(self) -> T {
        self.value
    }
}

mod sealed {
    pub trait Sealed {}
    impl<T> Sealed for super::Committed<T> {}
}

/// What a dispatcher accepts: a receipt of a committed unit of work, and nothing else.
///
/// Sealed: only [`Committed`] implements it, so no other value (a bare event, the events
/// of an open transaction, a hand-made list of envelopes) can be released.
#[diagnostic::on_unimplemented(
    message = "only a `Committed` receipt can be dispatched, not `{Self}`",
    label = "this is not the receipt of a committed unit of work",
    note = "events are released by commit: record them inside the unit of work with \
            `tx.record(event)`; `Session::unit_of_work` delivers them after commit",
    note = "if this is a `Result<Committed<_>, _>`, add `?` to get the receipt"
)]
pub trait Release: sealed::Sealed {
    /// The value the unit of work returned.
    type Value;

    /// Splits the receipt into its value, its events, and the lease token of the
    /// deliveries reserved for this process's fast path.
    #[doc(hidden)]
    fn into_parts(self) -> (Self::Value, Vec<Envelope>, Option<uuid::Uuid>);
}

impl<T> Release for Committed<T> {
    type Value = T;

    fn into_parts(self) -> (T, Vec<Envelope>, Option<uuid::Uuid>) {
        (self.value, self.events, self.lease_token)
    }
}
