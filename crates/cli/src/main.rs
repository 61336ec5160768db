//! `keel`: the operator's command for a Keel database, on PostgreSQL or SQLite.
//!
//! It reads `DATABASE_URL` (or `--database-url`), chooses the backend from the URL's
//! scheme, and works on the database alone: no handler code, no relay. Running services
//! pick up what it changes (a retried delivery, a re-created one) at their next poll.
//!
//! Exit codes a script can rely on: 0 done; 1 the command failed (database unreachable,
//! schema missing or outdated, a statement failed); 2 the command line is wrong, or a bulk
//! action was not confirmed; 3 nothing matched (`dead show` of an unknown delivery, a
//! retry or discard that selected nothing, `republish` without forwarders, `backfill` or
//! `unsubscribe` of a handler no relay has recorded).

mod args;
mod dead;
mod failure;
mod maintain;
mod status;
mod stdout;

use std::process::ExitCode;

use clap::Parser;
use keel::{Admin, Backend, Database, DatabaseOptions, SchemaState};

use args::{Cli, Command};
use failure::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return Failure::failed(format!("cannot start: {error}")).report(None),
    };
    let Some(url) = cli.database_url.clone() else {
        return Failure::usage("no database: set DATABASE_URL or pass --database-url").report(None);
    };
    let result = runtime.block_on(async {
        match backend_of(&url)? {
            Scheme::Postgres => run::<keel::sqlx::Postgres>(&url, cli).await,
            Scheme::Sqlite => run::<keel::sqlx::Sqlite>(&url, cli).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(Some(&url)),
    }
}

enum Scheme {
    Postgres,
    Sqlite,
}

fn backend_of(url: &str) -> Result<Scheme, Failure> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "postgres" | "postgresql" => Ok(Scheme::Postgres),
        "sqlite" => Ok(Scheme::Sqlite),
        _ => Err(Failure::usage(
            "the database URL must start with postgres://, postgresql:// or sqlite: \
             (set DATABASE_URL or pass --database-url)",
        )),
    }
}

async fn run<B: Backend>(url: &str, cli: Cli) -> Result<(), Failure> {
    let migrating = matches!(cli.command, Command::Migrate);
    let db = open::<B>(url, migrating).await?;
    if migrating {
        return maintain::migrate(&db, cli.json).await;
    }
    check_schema(&db).await?;
    let admin = Admin::new(db);
    let out = cli.output();
    match cli.command {
        Command::Status(args) => status::run(&admin, &args, out).await,
        Command::Dead { action } => dead::run(&admin, action, out).await,
        Command::Purge(args) => maintain::purge(&admin, &args, out).await,
        Command::Republish(args) => maintain::republish(&admin, &args, out).await,
        Command::Backfill(args) => maintain::backfill(&admin, &args, out).await,
        Command::Unsubscribe(args) => maintain::unsubscribe(&admin, &args, out).await,
        Command::Migrate => unreachable!("handled above"),
    }
}

/// Opens a small pool: the command runs one statement at a time. A missing SQLite file is
/// created only by `migrate`: for any other command it is a wrong path.
async fn open<B: Backend>(url: &str, create: bool) -> Result<Database<B>, Failure> {
    if let (Some(path), false) = (url.strip_prefix("sqlite:"), create) {
        let path = path
            .trim_start_matches("//")
            .split('?')
            .next()
            .unwrap_or_default();
        if !path.is_empty() && path != ":memory:" && !std::path::Path::new(path).exists() {
            return Err(Failure::failed(format!(
                "no SQLite database at `{path}`: check the path in the URL"
            )));
        }
    }
    // A short wait: an operator would rather hear at once that the server is away.
    DatabaseOptions::new(url)
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|error| Failure::failed(format!("cannot open the database: {error}")))
}

async fn check_schema<B: Backend>(db: &Database<B>) -> Result<(), Failure> {
    let state = db
        .schema_state()
        .await
        .map_err(|error| Failure::failed(format!("cannot read the schema: {error}")))?;
    match state {
        SchemaState::Current => Ok(()),
        SchemaState::Missing => Err(Failure::failed(format!(
            "the database at {} has no Keel tables: run `keel migrate` (or start the service, \
             which migrates) first",
            db.url()
        ))),
        SchemaState::Behind { pending } => Err(Failure::failed(format!(
            "{pending} of Keel's migrations {} not applied to {}: run `keel migrate` first",
            if pending == 1 { "is" } else { "are" },
            db.url()
        ))),
        SchemaState::Newer { found, known } => Err(Failure::failed(format!(
            "the database was migrated by a newer Keel (migration {found}; this `keel` knows up \
             to {known}): use the `keel` command of that version"
        ))),
    }
}
