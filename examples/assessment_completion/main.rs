//! Assessment completion: the skeleton a Keel service copies.
//!
//! Completing an assessment is a set of steps that must succeed or fail together, so it is
//! one unit of work: lock the assessment, refuse if it cannot be completed, mark it
//! completed; for a campaign, move the participation to "to share" and save the badges
//! earned; for a certification, score it, save the result and its competence marks, stamp
//! the course. It records `AssessmentCompleted` (and `CertificationScoringCompleted`);
//! handlers react after the commit, each on its own: user statistics, the partner
//! notification (over HTTP, retried), the partner certification.
//!
//! ```text
//! cargo run --example assessment_completion            # the story, on SQLite, no setup
//! DATABASE_URL=postgres://… cargo run --example assessment_completion   # on a fresh database
//! DATABASE_URL=sqlite:assessments.db cargo run --example assessment_completion -- --serve --seed
//!                                                      # as an HTTP service (config: `config.rs`)
//! ```
//!
//! Layout: `domain/` aggregates, events and rules (no database); `ports.rs` what the use
//! cases and handlers need stored, as traits on the backend type; `use_cases/` the
//! orchestration and `handlers/` the after-commit reactions, both generic over the
//! backend; `infrastructure/` one adapter per backend (`postgres/`, `sqlite/`) implementing
//! the ports, and the partner's HTTP client; `migrations/` the example's tables per
//! backend; `http.rs` the HTTP adapter; this file the wiring, where the backend is chosen.

// A test or example crate has no public API: `pub` only shares items between its modules.
#![allow(unreachable_pub)]

mod config;
mod domain;
mod handlers;
mod http;
mod infrastructure;
mod ports;
mod story;
mod telemetry;
mod use_cases;

#[cfg(all(test, feature = "postgres"))]
mod outage_tests;
#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use keel::{App, Database, DatabaseOptions, DeliveryOptions, Registry};

use crate::config::Config;
use crate::infrastructure::{Schema, partner, seed_demo_data};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.serve);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The URL schemes of the backends this build has (Cargo features `postgres`, `sqlite`).
const BACKENDS: &[&str] = &[
    #[cfg(feature = "postgres")]
    "`postgres://`",
    #[cfg(feature = "sqlite")]
    "`sqlite:`",
];

/// Chooses the backend, once, from the URL's scheme (`DATABASE_URL`, or for the story a
/// fresh SQLite file); from here on the program is generic code instantiated for it.
async fn run(config: Config) -> Result<(), Box<dyn Error + Send + Sync>> {
    let url = match &config.database_url {
        Some(url) => url.clone(),
        None => fresh_sqlite_file(),
    };
    match url.split_once(':').map(|(scheme, _)| scheme) {
        #[cfg(feature = "postgres")]
        Some("postgres" | "postgresql") => run_on::<sqlx::Postgres>(&url, config).await,
        #[cfg(feature = "sqlite")]
        Some("sqlite") => run_on::<sqlx::Sqlite>(&url, config).await,
        _ => Err(format!(
            "DATABASE_URL must start with one of {} (the backends this program was built with)",
            BACKENDS.join(", ")
        )
        .into()),
    }
}

async fn run_on<B: Schema>(url: &str, config: Config) -> Result<(), Box<dyn Error + Send + Sync>> {
    let db = open::<B>(url, &config).await?;
    if config.serve {
        serve(db, &config, shutdown_signal()).await
    } else {
        partner::use_quick_retries();
        story::tell(db).await
    }
}

/// A SQLite file in the temporary directory, emptied: the story starts from the seed data.
fn fresh_sqlite_file() -> String {
    let file = std::env::temp_dir().join("keel-assessment-completion.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    format!("sqlite:{}", file.display())
}

/// Opens the database and brings both schemas up to date: Keel's tables (recorded in
/// `keel_schema_migrations`), then the example's (in sqlx's `_sqlx_migrations`).
async fn open<B: Schema>(url: &str, config: &Config) -> Result<Database<B>, keel::Error> {
    let db = DatabaseOptions::new(url)
        .max_connections(config.database_pool_size)
        .acquire_timeout(config.database_acquire_timeout)
        .connect::<B>()
        .await?;
    db.migrate().await?;
    db.run_migrations(B::migrations()).await?;
    Ok(db)
}

/// The app: every handler registered in this program for backend `B`, a relay polling
/// often.
fn start<B: Schema>(db: Database<B>) -> Result<App<B>, keel::RegistryError> {
    let options = DeliveryOptions::default().poll_interval(Duration::from_millis(50));
    Ok(App::builder(db, Registry::global()?)
        .delivery(options)
        .start())
}

/// Serves until `shutdown` resolves: migrations already ran; demo rows only with `--seed`;
/// the partner at `PARTNER_URL`, or a stub on loopback. On shutdown, stops accepting, lets
/// in-flight requests and deliveries finish within `SHUTDOWN_TIMEOUT`.
async fn serve<B: Schema>(
    db: Database<B>,
    config: &Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    telemetry::install_prometheus()?;
    if config.seed && seed_demo_data(&db).await? {
        tracing::info!("seeded the demo rows (assessments 1 to 4)");
    }
    match &config.partner_url {
        Some(url) => partner::configure(url.clone()),
        None => {
            let (stub, _) = partner::start_stub_failing(config.partner_stub_failure_rate).await?;
            tracing::warn!(%stub, "PARTNER_URL is not set: a stub on loopback stands in for the partner");
            partner::configure(format!("http://{stub}"));
        }
    }
    let app = start(db)?;
    let listener = tokio::net::TcpListener::bind(config.listen_address).await?;
    println!(
        "serving on http://{}: POST /assessments/{{id}}/completion, GET /assessments/{{id}}, \
         GET /health, GET /metrics",
        listener.local_addr()?
    );
    let limits = http::Limits {
        request_timeout: config.request_timeout,
        shutdown_timeout: config.shutdown_timeout,
    };
    http::serve(app, listener, shutdown, limits).await
}

/// SIGTERM (a deploy, `docker stop`) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: no new requests; finishing those in flight");
}
