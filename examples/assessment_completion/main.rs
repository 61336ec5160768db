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
//! DATABASE_URL=postgres://… cargo run --example assessment_completion
//! cargo run --example assessment_completion -- --serve 127.0.0.1:3000   # as an HTTP service
//! ```
//!
//! Layout: `domain/` aggregates, events and rules (no database); `use_cases/` the
//! orchestration; `handlers/` the after-commit reactions; `infrastructure/` the schema, the
//! repositories on `&mut Tx` and the partner's HTTP client; `http.rs` the HTTP adapter;
//! this file the wiring.

mod domain;
mod handlers;
mod http;
mod infrastructure;
mod story;
mod use_cases;

#[cfg(test)]
mod tests;

use std::process::ExitCode;
use std::time::Duration;

use keel::{App, Database, DeliveryOptions, Registry};

/// Opens the database (`DATABASE_URL`, or a fresh SQLite file) with its seed data.
async fn open() -> Result<Database, Box<dyn std::error::Error>> {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let file = std::env::temp_dir().join("keel-assessment-completion.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            format!("sqlite:{}", file.display())
        }
    };
    let db = Database::connect(&url).await?;
    db.migrate().await?;
    infrastructure::schema::reset_with_seed_data(&db).await?;
    Ok(db)
}

/// The app: every handler registered in this program, a relay polling often.
fn start(db: Database) -> Result<App, keel::RegistryError> {
    let options = DeliveryOptions::default().poll_interval(Duration::from_millis(50));
    Ok(App::builder(db, Registry::global()?)
        .delivery(options)
        .start())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("--serve") => {
            let address = args.get(1).map_or("127.0.0.1:3000", String::as_str);
            serve(address).await
        }
        None => story::tell().await,
        Some(other) => Err(format!("unknown argument `{other}`; use --serve [ADDRESS]").into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(address: &str) -> Result<(), Box<dyn std::error::Error>> {
    let db = open().await?;
    let (partner, _) = infrastructure::partner::start_stub(2).await?;
    infrastructure::partner::configure(format!("http://{partner}"));
    let app = start(db)?;
    let listener = tokio::net::TcpListener::bind(address).await?;
    println!(
        "serving on http://{} (partner stub on {partner}); Ctrl-C stops",
        listener.local_addr()?
    );
    println!(
        "  POST /assessments/{{id}}/completion   GET /assessments/{{id}}   (seeded ids: 1 to 4)"
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    http::serve(app, listener, ctrl_c).await?;
    Ok(())
}
