use serde::Serialize;
use serde::de::DeserializeOwned;

/// A request to do something, sent to a queue and handled once, later, by a worker: the
/// asynchronous bus.
///
/// Unlike a [`DomainEvent`](crate::DomainEvent), which any number of handlers may react to,
/// a command has exactly one handler. Sending is instant; workers consume commands with
/// controlled concurrency.
///
/// A command may carry a [`key`](Command::key): two commands with the same key are never
/// handled at the same time, and are handled in the order their transactions committed;
/// commands with different keys proceed in parallel. Use the id of the thing the command
/// changes (a post, an account), so that changes to one thing queue up instead of fighting
/// over its row. Commands that commute (a like, a counter increment) can give up the order
/// and keep only the one-at-a-time: see [`ORDERED`](Command::ORDERED).
///
/// ```
/// # mod keel { pub use keel_domain::Command; }
/// use keel::Command;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct VoteForPost { post_id: i64, user_id: i64 }
///
/// impl Command for VoteForPost {
///     const NAME: &'static str = "post.vote.v1";
///     fn key(&self) -> Option<String> { Some(format!("post:{}", self.post_id)) }
/// }
/// ```
pub trait Command: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name the command's handler is registered under.
    const NAME: &'static str;

    /// The serialization key, if commands of this kind must not run concurrently for the
    /// same thing. `None` (the default): no ordering, full parallelism.
    fn key(&self) -> Option<String> {
        None
    }

    /// Whether the commands of one key run in commit order (the default), or only one at a
    /// time, in any order.
    ///
    /// Commit order has a price on a busy key: the outbox write locks the key's row until
    /// the transaction ends, so the commits of one key's commands follow each other (about
    /// one disk flush each). Commands that commute set `false`: their sends never wait for
    /// each other, so a burst on one key is sent at full speed.
    const ORDERED: bool = true;
}
