use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A typed, time-ordered unique identity (UUID v7) for values of type `T`.
///
/// The type parameter keeps an `Id<Assessment>` from being passed where an
/// `Id<CampaignParticipation>` is expected. Ids created later sort after ids created
/// earlier (to the millisecond), which keeps B-tree indexes append-mostly.
///
/// ```
/// # mod keel { pub use keel_domain::Id; }
/// use keel::Id;
/// struct Post;
/// let a: Id<Post> = Id::new();
/// let b: Id<Post> = Id::new();
/// assert!(a < b);
/// assert_eq!(a.to_string().parse::<Id<Post>>().unwrap(), a);
/// ```
pub struct Id<T: ?Sized> {
    uuid: Uuid,
    marker: PhantomData<fn() -> T>,
}

impl<T: ?Sized> Id<T> {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self::from_uuid(Uuid::now_v7())
    }

    /// Wraps an existing UUID, e.g. one read from storage.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Id {
            uuid,
            marker: PhantomData,
        }
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.uuid
    }
}

/// The UUID, to bind in a `uuid` column: `.bind(Uuid::from(ctx.event_id()))`.
///
/// ```
/// # mod keel { pub use keel_domain::Id; }
/// use keel::Id;
/// struct Post;
/// let id: Id<Post> = Id::new();
/// let uuid = uuid::Uuid::from(id);
/// assert_eq!(Id::<Post>::from(uuid), id);
/// ```
impl<T: ?Sized> From<Id<T>> for Uuid {
    fn from(id: Id<T>) -> Self {
        id.uuid
    }
}

/// An id read from a `uuid` column.
impl<T: ?Sized> From<Uuid> for Id<T> {
    fn from(uuid: Uuid) -> Self {
        Id::from_uuid(uuid)
    }
}

impl<T: ?Sized> Default for Id<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: ?Sized> Clone for Id<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Id<T> {}

impl<T: ?Sized> PartialEq for Id<T> {
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid
    }
}

impl<T: ?Sized> Eq for Id<T> {}

impl<T: ?Sized> PartialOrd for Id<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: ?Sized> Ord for Id<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.uuid.cmp(&other.uuid)
    }
}

impl<T: ?Sized> Hash for Id<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.uuid.hash(state)
    }
}

impl<T: ?Sized> fmt::Debug for Id<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.uuid)
    }
}

impl<T: ?Sized> fmt::Display for Id<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.uuid.hyphenated(), f)
    }
}

impl<T: ?Sized> FromStr for Id<T> {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self::from_uuid)
    }
}

impl<T: ?Sized> Serialize for Id<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.uuid.serialize(serializer)
    }
}

impl<'de, T: ?Sized> Deserialize<'de> for Id<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Uuid::deserialize(deserializer).map(Self::from_uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Thing;

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let ids: Vec<Id<Thing>> = (0..1000).map(|_| Id::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn round_trips_through_text_and_json() {
        let id: Id<Thing> = Id::new();
        assert_eq!(id.to_string().parse::<Id<Thing>>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<Id<Thing>>(&json).unwrap(), id);
        assert!("not-a-uuid".parse::<Id<Thing>>().is_err());
    }
}
