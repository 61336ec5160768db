use std::fmt::Display;

use crate::Version;

/// A consistency boundary: an entity with an identity and a [`Version`].
///
/// Everything inside one aggregate changes together, in one unit of work; the version
/// lets a save detect that someone else changed the aggregate since it was loaded.
///
/// ```
/// # mod keel { pub use keel_domain::{Aggregate, Version}; }
/// use keel::{Aggregate, Version};
///
/// struct Account { id: i64, balance: i64, version: Version }
///
/// impl Aggregate for Account {
///     const TYPE: &'static str = "Account";
///     type Id = i64;
///     fn id(&self) -> &i64 { &self.id }
///     fn version(&self) -> Version { self.version }
/// }
///
/// let account = Account { id: 1, balance: 100, version: Version::INITIAL };
/// assert_eq!(Account::TYPE, "Account");
/// assert_eq!(account.version(), Version::INITIAL);
/// ```
pub trait Aggregate {
    /// A stable, human-readable name of the aggregate type, used in errors and envelopes.
    const TYPE: &'static str;

    /// The identity type, e.g. `i64`, `String` or [`Id<Self>`](crate::Id).
    type Id: Clone + Display + Send + Sync + 'static;

    /// This aggregate's identity.
    fn id(&self) -> &Self::Id;

    /// The version this aggregate had when it was loaded.
    fn version(&self) -> Version;
}
