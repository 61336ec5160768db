//! The assembled service: database, handlers, delivery.

use std::time::Duration;

use keel_dispatcher::{DeadLetters, DeliveryOptions, Dispatcher, Registry, Session};
use keel_orchestrator::{Backend, Database, Error};

/// A Keel service: its database, the handlers its events are delivered to, and the relay
/// that delivers whatever the fast path could not.
///
/// Build one at start-up (within a Tokio runtime) and share it (it is cheap to clone);
/// take a [`Session`] per request or job to run units of work.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use keel::Registry;
/// use keel::sqlite::{App, Database};
///
/// let db = Database::connect("sqlite:data/app.db").await?;
/// db.migrate().await?;
/// let app = App::new(db, Registry::global()?);
///
/// let mut session = app.session();
/// session
///     .unit_of_work(async |tx| {
///         keel::sqlx::query("UPDATE posts SET likes = likes + 1 WHERE id = 1")
///             .execute(tx.conn())
///             .await?;
///         Ok(())
///     })
///     .await?;
/// app.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct App<B: Backend> {
    dispatcher: Dispatcher<B>,
}

impl<B: Backend> Clone for App<B> {
    fn clone(&self) -> Self {
        App {
            dispatcher: self.dispatcher.clone(),
        }
    }
}

/// Builds an [`App`] with explicit delivery options.
#[derive(Debug)]
pub struct AppBuilder<B: Backend> {
    db: Database<B>,
    registry: Registry<B>,
    options: DeliveryOptions,
    relay: bool,
}

impl<B: Backend> AppBuilder<B> {
    /// Sets how events are delivered (leases, timeouts, relay pace, retention).
    #[must_use]
    pub fn delivery(mut self, options: DeliveryOptions) -> Self {
        self.options = options;
        self
    }

    /// Whether this process runs a relay (default `true`). A process without one still
    /// delivers its own commits on the fast path; other processes' relays do the rest.
    #[must_use]
    pub fn relay(mut self, enabled: bool) -> Self {
        self.relay = enabled;
        self
    }

    /// Builds the app and starts its relay. Must be called within a Tokio runtime.
    pub fn start(self) -> App<B> {
        let dispatcher = Dispatcher::with_options(self.db, self.registry, self.options);
        if self.relay {
            dispatcher.start_relay();
        }
        App { dispatcher }
    }
}

impl<B: Backend> App<B> {
    /// A service on `db` whose events go to `registry`'s handlers, with default delivery
    /// options and a relay. Must be called within a Tokio runtime.
    pub fn new(db: Database<B>, registry: Registry<B>) -> Self {
        App::builder(db, registry).start()
    }

    /// A builder, for delivery options.
    pub fn builder(db: Database<B>, registry: Registry<B>) -> AppBuilder<B> {
        AppBuilder {
            db,
            registry,
            options: DeliveryOptions::default(),
            relay: true,
        }
    }

    /// A session to run units of work with.
    pub fn session(&self) -> Session<'_, B> {
        self.dispatcher.session()
    }

    /// The service's database.
    pub fn database(&self) -> &Database<B> {
        self.dispatcher.database()
    }

    /// The service's dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher<B> {
        &self.dispatcher
    }

    /// The dead letter: deliveries that gave up, to inspect, retry or discard.
    pub fn dead_letters(&self) -> DeadLetters<B> {
        self.dispatcher.dead_letters()
    }

    /// Waits until every delivery to this app's handlers is done or dead (deliveries to
    /// other services' handlers are theirs to wait for), or `timeout`; returns whether
    /// everything was delivered. See [`Dispatcher::wait_until_delivered`].
    pub async fn wait_until_delivered(&self, timeout: Duration) -> Result<bool, Error> {
        self.dispatcher.wait_until_delivered(timeout).await
    }

    /// Stops the relay, waits for the deliveries running in this process (those claimed but
    /// not started are given back, for another relay to take at once), then closes the
    /// database pool.
    ///
    /// Fails at once with [`Error::InsideUnitOfWork`] inside a unit of work, whose own
    /// connection would never be returned.
    pub async fn shutdown(self) -> Result<(), Error> {
        keel_orchestrator::ensure_outside_unit_of_work("shut the app down")?;
        self.dispatcher.shutdown().await;
        self.dispatcher.database().close().await
    }
}
