use serde::Serialize;
use serde::de::DeserializeOwned;

/// A fact that happened in the domain, named in the past tense.
///
/// Events are *recorded* inside a unit of work and delivered to handlers only after the
/// transaction commits. They are stored and may be delivered long after they were
/// recorded, possibly by a newer version of the program, so two things must stay stable:
///
/// - [`NAME`](DomainEvent::NAME), the key handlers are registered under. Put a version in
///   it (`"assessment.completed.v1"`) and add a new event type rather than changing the
///   meaning of an existing one.
/// - the serialized payload: add optional fields, never rename or remove fields.
///
/// ```
/// # mod keel { pub use keel_domain::DomainEvent; }
/// use keel::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct PostLiked { post_id: i64, user_id: i64 }
///
/// impl DomainEvent for PostLiked {
///     const NAME: &'static str = "post.liked.v1";
///     const AGGREGATE_TYPE: &'static str = "Post";
///     fn aggregate_id(&self) -> String { self.post_id.to_string() }
/// }
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name handlers are registered under, e.g. `"assessment.completed.v1"`.
    const NAME: &'static str;

    /// The type of the aggregate this event happened to, e.g. `"Assessment"`.
    const AGGREGATE_TYPE: &'static str;

    /// The id of the aggregate this event happened to, as text.
    fn aggregate_id(&self) -> String;
}
