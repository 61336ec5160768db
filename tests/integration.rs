//! Keel's integration tests, on a real PostgreSQL, on SQLite and through a real NATS
//! JetStream server. One test binary for all of them: each binary links the whole
//! dependency tree again, and tests that wait (on a lease, a clock, a child process) run
//! beside tests that work instead of after them. Each directory is one area:
//!
//! - `unit_of_work`: commit, rollback, retries, locks, optimistic versions;
//! - `native_types`: the driver's own types, `FromRow`, repositories and `query!`;
//! - `events`: events after commit, delivered to each handler, grouped, traced;
//! - `commands`: the command bus, per-key order, batches;
//! - `durability`: crashes, restarts, competing relays, bad input, deploys;
//! - `clock`: leases and due times under skewed process clocks;
//! - `nats` (with the `nats` feature): services exchanging events through JetStream.
//!
//! Run one area with a filter: `cargo test --test integration durability::`.

// A test crate has no public API: `pub` only shares items between its modules.
#![allow(unreachable_pub)]

mod clock;
mod commands;
mod durability;
mod events;
mod native_types;
#[cfg(feature = "nats")]
mod nats;
mod unit_of_work;

/// At most two heavy tests at once, whatever the test thread count: the tests that are
/// CPU-bound (a broker, child processes that are killed and restarted) take turns, while
/// the rest of the suite, which mostly waits on the database, runs beside them.
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

/// The subscriber of the whole test binary, for the tests that read what `tracing` records
/// (installed by the first of them; the others find it installed): the OpenTelemetry layer,
/// and the server notices the driver logs ([`server_notices`]). Global, not per thread:
/// `tracing` decides once per site, for every thread, whether anyone listens, and a test
/// thread with a subscriber of its own would race with the others' decisions. Only Keel's
/// spans, the tests' own and the notices: every other test in the binary runs beside it, and
/// should not pay for sqlx's event per query.
pub fn test_subscriber() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let only = tracing_subscriber::filter::Targets::new()
        .with_target("keel", tracing::Level::TRACE)
        .with_target("integration", tracing::Level::TRACE);
    let notices =
        tracing_subscriber::filter::Targets::new().with_target(NOTICE_TARGET, tracing::Level::INFO);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_filter(only))
        .with(Notices.with_filter(notices));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Where sqlx logs the notices and warnings the server sends.
const NOTICE_TARGET: &str = "sqlx::postgres::notice";

static NOTICES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The messages of the server notices logged since [`test_subscriber`] was installed, by
/// every test of the binary.
pub fn server_notices() -> Vec<String> {
    NOTICES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Keeps each notice's message in [`NOTICES`].
struct Notices;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Notices {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        NOTICES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(message.0);
    }
}
