//! Assessment completion: the skeleton a Keel service copies.
//!
//! Completing an assessment is a set of steps that must succeed or fail together, so it
//! is one unit of work: lock the assessment, refuse if it is already completed, mark it
//! completed, move a campaign participation to "to share", stamp a certification course.
//! It records `AssessmentCompleted`; handlers react to it after the commit, each on its own.
//!
//! Run it with no setup (SQLite, a fresh file in the temporary directory):
//!
//! ```text
//! cargo run --example assessment_completion
//! ```
//!
//! or on PostgreSQL: `DATABASE_URL=postgres://user@host/db cargo run --example assessment_completion`.
//!
//! Layout: `domain/` holds the aggregates, events and rules (no database), `use_cases/`
//! the orchestration, `handlers/` the after-commit reactions, `infrastructure/` the schema
//! and the repositories working on `&mut Tx`.

mod domain;
mod handlers;
mod infrastructure;
mod use_cases;

use std::process::ExitCode;

use keel::{App, Database, Registry};

use crate::domain::{AlreadyCompleted, AssessmentId};
use crate::use_cases::complete_assessment;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
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
    println!("database   {} ({:?})", db.url(), db.backend());
    db.migrate().await?;
    infrastructure::schema::reset_with_seed_data(&db).await?;
    let registry = Registry::global()?;
    for handler in registry.handlers() {
        println!("handler    {} on {}", handler.name(), handler.event());
    }
    let app = App::new(db, registry);
    let mut session = app.session();
    println!(
        "seeded     assessment 1 (campaign, participation 10), assessment 2 (certification, course 20)\n"
    );

    println!("1. complete the campaign assessment");
    let done = complete_assessment(&mut session, AssessmentId(1)).await?;
    println!("   committed: {done}\n");

    println!("2. complete it again");
    match complete_assessment(&mut session, AssessmentId(1)).await {
        Err(error) if error.rejection::<AlreadyCompleted>().is_some() => {
            println!("   refused and rolled back: {error}\n")
        }
        other => panic!("a second completion must be refused, got {other:?}"),
    }

    println!("3. two requests complete the certification assessment at the same moment");
    let (mut first, mut second) = (app.session(), app.session());
    let (a, b) = tokio::join!(
        complete_assessment(&mut first, AssessmentId(2)),
        complete_assessment(&mut second, AssessmentId(2)),
    );
    for (request, outcome) in [("a", a), ("b", b)] {
        match outcome {
            Ok(done) => println!("   request {request}: committed: {done}"),
            Err(error) if error.rejection::<AlreadyCompleted>().is_some() => {
                println!("   request {request}: refused: {error}")
            }
            Err(error) => return Err(error.into()),
        }
    }

    app.wait_until_delivered(std::time::Duration::from_secs(30))
        .await?;
    let summary = infrastructure::schema::summary(app.database()).await?;
    println!("\nfinal state (after the handlers ran)\n{summary}");
    app.shutdown().await;
    Ok(())
}
