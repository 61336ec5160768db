//! The assembled service: database, handlers, dispatcher.

use keel_dispatcher::{Dispatcher, Registry, Session};
use keel_orchestrator::Database;

/// A Keel service: its database and the handlers its events are delivered to.
///
/// Build one at start-up and share it (it is cheap to clone); take a [`Session`] per
/// request or job to run units of work.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use keel::{App, Database, Registry};
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
/// app.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct App {
    dispatcher: Dispatcher,
}

impl App {
    /// A service on `db` whose events go to `registry`'s handlers.
    pub fn new(db: Database, registry: Registry) -> Self {
        App {
            dispatcher: Dispatcher::new(db, registry),
        }
    }

    /// A session to run units of work with.
    pub fn session(&self) -> Session<'_> {
        self.dispatcher.session()
    }

    /// The service's database.
    pub fn database(&self) -> &Database {
        self.dispatcher.database()
    }

    /// The service's dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Waits for in-flight deliveries to finish, then closes the database pool.
    pub async fn shutdown(self) {
        self.dispatcher.wait_idle().await;
        self.dispatcher.database().close().await;
    }
}
