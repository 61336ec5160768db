use std::fmt;

use serde::{Deserialize, Serialize};

/// The version of an aggregate, used for optimistic locking.
///
/// A version starts at [`Version::INITIAL`] when the aggregate is first stored and grows
/// by one on every successful save. A save states the version it loaded; if the stored
/// version moved on meanwhile, the save is a conflict and the unit of work is retried.
///
/// ```
/// # mod keel { pub use keel_domain::Version; }
/// use keel::Version;
/// let v = Version::INITIAL;
/// assert_eq!(v.next(), Version::new(2));
/// assert!(v < v.next());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(i64);

impl Version {
    /// The version of an aggregate that has just been stored for the first time.
    pub const INITIAL: Version = Version(1);

    /// A version with the given number, as read from storage.
    pub const fn new(number: i64) -> Self {
        Version(number)
    }

    /// The version a successful save produces.
    #[must_use]
    pub const fn next(self) -> Self {
        Version(self.0 + 1)
    }

    /// The number stored in the database's `version` column.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl From<i64> for Version {
    fn from(number: i64) -> Self {
        Version(number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_increments_by_one_and_orders_after() {
        let v = Version::new(41);
        assert_eq!(v.next().get(), 42);
        assert!(v.next() > v);
    }

    #[test]
    fn serializes_as_a_bare_number() {
        assert_eq!(serde_json::to_string(&Version::new(3)).unwrap(), "3");
        assert_eq!(
            serde_json::from_str::<Version>("3").unwrap(),
            Version::new(3)
        );
        assert_eq!(Version::new(3).to_string(), "v3");
    }
}
