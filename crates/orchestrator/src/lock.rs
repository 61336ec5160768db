//! Pessimistic locks: rows locked for update or share, with or without waiting.
//!
//! On PostgreSQL a row lock is `SELECT ... FOR UPDATE | FOR SHARE [NOWAIT | SKIP LOCKED]`,
//! held until the unit of work ends; waiting is bounded by the unit of work's lock timeout.
//! On SQLite every writing unit of work already holds the database's single write lock
//! (`BEGIN IMMEDIATE`), so a row lock is granted at once: the call keeps its meaning (the
//! row is protected until commit) and still tells whether the row exists.

use std::fmt;

use keel_domain::Id;

/// The key of a row to lock or version: an integer, a text or a UUID id.
///
/// A UUID is bound as PostgreSQL's `uuid` and as SQLite's hyphenated text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A `BIGINT`/`INTEGER` key.
    Int(i64),
    /// A `TEXT` key.
    Text(String),
    /// A `UUID` key.
    Uuid(uuid::Uuid),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Text(s) => write!(f, "{s}"),
            Key::Uuid(u) => write!(f, "{u}"),
        }
    }
}

impl From<i64> for Key {
    fn from(value: i64) -> Self {
        Key::Int(value)
    }
}

impl From<i32> for Key {
    fn from(value: i32) -> Self {
        Key::Int(value.into())
    }
}

impl From<&i64> for Key {
    fn from(value: &i64) -> Self {
        Key::Int(*value)
    }
}

impl From<String> for Key {
    fn from(value: String) -> Self {
        Key::Text(value)
    }
}

impl From<&String> for Key {
    fn from(value: &String) -> Self {
        Key::Text(value.clone())
    }
}

impl From<&str> for Key {
    fn from(value: &str) -> Self {
        Key::Text(value.to_owned())
    }
}

impl From<uuid::Uuid> for Key {
    fn from(value: uuid::Uuid) -> Self {
        Key::Uuid(value)
    }
}

impl<T: ?Sized> From<Id<T>> for Key {
    fn from(value: Id<T>) -> Self {
        Key::Uuid(*value.as_uuid())
    }
}

impl<T: ?Sized> From<&Id<T>> for Key {
    fn from(value: &Id<T>) -> Self {
        Key::Uuid(*value.as_uuid())
    }
}

/// Whether a row lock excludes other writers only, or other writers and lockers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// `FOR UPDATE`: exclusive; for rows the unit of work will change.
    ForUpdate,
    /// `FOR SHARE`: shared; for rows that must not change while the unit of work runs.
    ForShare,
}

/// What a row lock does when another transaction holds the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Wait, up to the unit of work's lock timeout ([`Error::LockTimeout`](crate::Error::LockTimeout)).
    Wait,
    /// Fail at once with [`Error::RowLocked`](crate::Error::RowLocked) (transient: retried).
    NoWait,
    /// Do not wait and report [`Locked::Skipped`]; for queue-like tables.
    SkipLocked,
}

/// A request to lock one row, built with [`RowLock::for_update`] or [`RowLock::for_share`].
///
/// ```
/// # mod keel { pub use keel_orchestrator::{LockWait, RowLock}; }
/// use keel::{LockWait, RowLock};
/// let lock = RowLock::for_update("accounts", 42).nowait();
/// assert_eq!(lock.wait_policy(), LockWait::NoWait);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLock {
    pub(crate) table: &'static str,
    pub(crate) key_column: &'static str,
    pub(crate) key: Key,
    pub(crate) mode: LockMode,
    pub(crate) wait: LockWait,
}

impl RowLock {
    /// Locks row `key` of `table` exclusively (the key column is `id` unless changed).
    pub fn for_update(table: &'static str, key: impl Into<Key>) -> Self {
        RowLock {
            table,
            key_column: "id",
            key: key.into(),
            mode: LockMode::ForUpdate,
            wait: LockWait::Wait,
        }
    }

    /// Locks row `key` of `table` in share mode.
    pub fn for_share(table: &'static str, key: impl Into<Key>) -> Self {
        RowLock {
            mode: LockMode::ForShare,
            ..RowLock::for_update(table, key)
        }
    }

    /// Names the key column when it is not `id`.
    #[must_use]
    pub fn key_column(mut self, column: &'static str) -> Self {
        self.key_column = column;
        self
    }

    /// Fails at once if the row is locked ([`LockWait::NoWait`]).
    #[must_use]
    pub fn nowait(mut self) -> Self {
        self.wait = LockWait::NoWait;
        self
    }

    /// Skips the row if it is locked ([`LockWait::SkipLocked`]).
    #[must_use]
    pub fn skip_locked(mut self) -> Self {
        self.wait = LockWait::SkipLocked;
        self
    }

    /// What this lock does when the row is held by someone else.
    pub fn wait_policy(&self) -> LockWait {
        self.wait
    }

    pub(crate) fn exists_sql(&self) -> String {
        format!(
            "SELECT 1 FROM {} WHERE {} = $1",
            self.table, self.key_column
        )
    }
}

/// The outcome of [`Tx::lock`](crate::Tx::lock).
#[must_use = "a missing or skipped row is not locked; check the outcome"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    /// The row is locked until the unit of work ends.
    Acquired,
    /// No row has that key.
    Missing,
    /// The row exists but another transaction holds it ([`LockWait::SkipLocked`] only).
    Skipped,
}

/// Whether `name` is a plain identifier (`table` or `schema.table`), safe to splice into SQL.
pub(crate) fn is_identifier(name: &str) -> bool {
    let part = |p: &str| {
        let mut chars = p.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_before_reaching_sql() {
        assert!(is_identifier("accounts"));
        assert!(is_identifier("billing.accounts_2"));
        assert!(is_identifier("_t"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("1accounts"));
        assert!(!is_identifier("accounts; DROP TABLE x"));
        assert!(!is_identifier("a.b.c"));
        assert!(!is_identifier("\"quoted\""));
    }

    #[test]
    fn keys_convert_from_common_id_types() {
        struct Post;
        let id: Id<Post> = Id::new();
        assert_eq!(Key::from(&id), Key::Uuid(*id.as_uuid()));
        assert_eq!(Key::from(7_i32), Key::Int(7));
        assert_eq!(Key::from("a").to_string(), "a");
    }
}
