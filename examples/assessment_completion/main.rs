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
//! cargo run --example assessment_completion -- --serve 127.0.0.1:3000   # as an HTTP service
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

mod domain;
mod handlers;
mod http;
mod infrastructure;
mod ports;
mod story;
mod telemetry;
mod use_cases;

#[cfg(test)]
mod tests;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use keel::{App, Database, DeliveryOptions, Registry};

use crate::infrastructure::{Schema, partner, seed_demo_data};

/// What the program was asked to do.
enum Mode {
    Story,
    Serve(String),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    telemetry::init(args.first().is_some_and(|a| a == "--serve"));
    let mode = match args.first().map(String::as_str) {
        None => Mode::Story,
        Some("--serve") => Mode::Serve(args.get(1).cloned().unwrap_or("127.0.0.1:3000".into())),
        Some(other) => {
            eprintln!("error: unknown argument `{other}`; use --serve [ADDRESS]");
            return ExitCode::FAILURE;
        }
    };
    match run(mode).await {
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

/// Chooses the backend, once, from the URL's scheme (`DATABASE_URL`, or a fresh SQLite
/// file); from here on the program is generic code instantiated for that backend.
async fn run(mode: Mode) -> Result<(), Box<dyn Error + Send + Sync>> {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => fresh_sqlite_file(),
    };
    match url.split_once(':').map(|(scheme, _)| scheme) {
        #[cfg(feature = "postgres")]
        Some("postgres" | "postgresql") => run_on::<sqlx::Postgres>(&url, mode).await,
        #[cfg(feature = "sqlite")]
        Some("sqlite") => run_on::<sqlx::Sqlite>(&url, mode).await,
        _ => Err(format!(
            "set DATABASE_URL to a URL starting with one of {} (the backends this program was \
             built with)",
            BACKENDS.join(", ")
        )
        .into()),
    }
}

async fn run_on<B: Schema>(url: &str, mode: Mode) -> Result<(), Box<dyn Error + Send + Sync>> {
    let db = open::<B>(url).await?;
    match mode {
        Mode::Story => story::tell(db).await,
        Mode::Serve(address) => serve(db, &address).await,
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
async fn open<B: Schema>(url: &str) -> Result<Database<B>, keel::Error> {
    let db = Database::<B>::connect(url).await?;
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

async fn serve<B: Schema>(
    db: Database<B>,
    address: &str,
) -> Result<(), Box<dyn Error + Send + Sync>> {
    telemetry::install_prometheus()?;
    let seeded = seed_demo_data(&db).await?;
    let (partner, _) = partner::start_stub(2).await?;
    partner::configure(format!("http://{partner}"));
    let app = start(db)?;
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!(
        "serving on http://{} (partner stub on {partner}); Ctrl-C stops",
        listener.local_addr()?
    );
    let data = if seeded {
        "seeded ids: 1 to 4"
    } else {
        "the database's rows"
    };
    println!("  POST /assessments/{{id}}/completion   GET /assessments/{{id}}   ({data})");
    println!("  GET /health   GET /metrics");
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    http::serve(app, listener, ctrl_c).await?;
    Ok(())
}
