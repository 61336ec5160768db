//! Services that share no database exchange events through a real NATS JetStream server:
//! forwarded from one service's outbox, accepted into another's, each effect once.
//! Each file is compiled once per backend, in module `postgres` and module `sqlite`.
//!
//! The server comes from `KEEL_TEST_NATS_URL` (the README's test command starts one); the
//! tests are skipped without it, unless `KEEL_REQUIRE_NATS=1`.

// A test crate has no public API: `pub` only shares items between its modules.
#![allow(unreachable_pub)]
// The same files, compiled once per backend.
#![allow(clippy::duplicate_mod)]

/// At most two NATS tests at once, whatever the test thread count: they are CPU-bound (a
/// broker, child processes), and the suite runs more threads than the machine has cores.
/// One gate for both backends' modules, so it lives here.
pub mod turns {
    use std::sync::{Condvar, Mutex, PoisonError};

    const AT_ONCE: usize = 2;
    static RUNNING: Mutex<usize> = Mutex::new(0);
    static FREED: Condvar = Condvar::new();

    /// A test's turn; the next waiting test starts when it is dropped.
    #[derive(Debug)]
    pub struct Turn(());

    impl Turn {
        /// Waits (blocking the test's thread) until fewer than two tests hold a turn.
        pub fn take() -> Self {
            let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
            while *running >= AT_ONCE {
                running = FREED.wait(running).unwrap_or_else(PoisonError::into_inner);
            }
            *running += 1;
            Turn(())
        }
    }

    impl Drop for Turn {
        fn drop(&mut self) {
            *RUNNING.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
            FREED.notify_one();
        }
    }
}

#[path = "."]
mod postgres {
    pub type B = keel::sqlx::Postgres;
    pub const POSTGRES: bool = true;
    pub use keel::postgres::{App, Database, Handler, HandlerContext, Registry};

    mod commands;
    mod crash;
    mod flows;
    mod restart;
    mod support;
}

#[path = "."]
mod sqlite {
    pub type B = keel::sqlx::Sqlite;
    pub const POSTGRES: bool = false;
    pub use keel::sqlite::{App, Database, Handler, HandlerContext, Registry};

    mod commands;
    mod crash;
    mod flows;
    mod restart;
    mod support;
}
