//! The marker of a unit of work's transaction on PostgreSQL: set at `BEGIN` (`SET LOCAL`)
//! and checked before `COMMIT`, so that Keel commits only the transaction it began, on the
//! connection it began it on. (SQLite's backend marks its transactions with a savepoint.)
//!
//! A marker must differ from every other transaction's, in this process and in others
//! sharing the database. A random id per transaction would cost a system call each
//! (`getrandom`); a counter added to a random base drawn once per process is as unique
//! and costs an atomic increment.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A marker no other transaction has.
pub(crate) fn new() -> uuid::Uuid {
    static BASE: OnceLock<u128> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| uuid::Uuid::now_v7().as_u128());
    let next = NEXT.fetch_add(1, Ordering::Relaxed);
    uuid::Uuid::from_u128(base.wrapping_add(u128::from(next)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn markers_differ() {
        let (a, b) = (super::new(), super::new());
        assert_ne!(a, b);
    }
}
