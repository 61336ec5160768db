//! The peers of the `delivery` and `drain` scenarios: the same jobs written with other
//! job queues on PostgreSQL, in `crates/bench/peers/`:
//!
//! - Rust programs (sqlxmq, apalis) in a workspace of their own, because those libraries
//!   pin other sqlx versions; built once per run, on first use;
//! - a Node.js script (Graphile Worker), whose npm packages (`package-lock.json`) are
//!   installed with `npm ci` into `target/peers/graphile/` on first use, and again only
//!   when the lock changes.
//!
//! The harness gives each peer a fresh database on the same server, runs it, and reads the
//! `PEER … events_per_s=…` line it prints last.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use keel::sqlx;

use crate::Report;
use crate::common;
use crate::uow::verdict;

/// How a peer is run.
enum Program {
    /// A binary of the peers' Cargo workspace; it runs the `delivery` job only.
    Rust(&'static str),
    /// `peers/graphile/peer.mjs` under Node.js with this `--mode`.
    Graphile(&'static str),
}

/// A job queue Keel is compared with.
pub struct Peer {
    /// Names its database and its messages.
    name: &'static str,
    /// Its row in the tables.
    label: &'static str,
    /// Its rate in the report.
    rate_key: &'static str,
    /// Keel's rate over its rate, in the report.
    ratio_key: &'static str,
    program: Program,
}

pub const SQLXMQ: Peer = Peer {
    name: "sqlxmq",
    label: "sqlxmq",
    rate_key: "sqlxmq_events_per_s",
    ratio_key: "vs_sqlxmq",
    program: Program::Rust("sqlxmq"),
};

pub const APALIS: Peer = Peer {
    name: "apalis",
    label: "apalis (PostgreSQL storage)",
    rate_key: "apalis_events_per_s",
    ratio_key: "vs_apalis",
    program: Program::Rust("apalis"),
};

/// Graphile Worker with its default options, but as many jobs at once as the Rust
/// peers run handlers (16; Graphile's own default is 1). See `peers/graphile/peer.mjs`.
pub const GRAPHILE: Peer = Peer {
    name: "graphile",
    label: "Graphile Worker (defaults)",
    rate_key: "graphile_events_per_s",
    ratio_key: "vs_graphile",
    program: Program::Graphile("defaults"),
};

/// Graphile Worker with the options of its performance page: jobs fetched 500 at a time,
/// completions batched, 24 jobs at once.
pub const GRAPHILE_BATCHED: Peer = Peer {
    name: "graphile_batched",
    label: "Graphile Worker (batched: localQueue 500, completeJobBatchDelay 0)",
    rate_key: "graphile_batched_events_per_s",
    ratio_key: "vs_graphile_batched",
    program: Program::Graphile("batched"),
};

/// What a peer is asked to run.
#[derive(Clone, Copy)]
pub enum Job {
    /// `events` jobs enqueued by `producers` producing transactions, timed to the last
    /// effect.
    Delivery { events: u64, producers: u64 },
    /// `jobs` jobs pending beforehand, timed until all are done.
    Drain { jobs: u64 },
}

impl Job {
    fn scenario(self) -> &'static str {
        match self {
            Job::Delivery { .. } => "delivery",
            Job::Drain { .. } => "drain",
        }
    }

    fn count(self) -> u64 {
        match self {
            Job::Delivery { events, .. } => events,
            Job::Drain { jobs } => jobs,
        }
    }
}

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The peers' target directory, beside the workspace's.
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/peers")
}

/// Builds the Rust peers (release) once per run; the first build takes a few minutes.
fn build() -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            eprintln!("building the peer programs (crates/bench/peers; the first time takes a few minutes)…");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let status = Command::new(cargo)
                .args(["build", "--release", "--locked", "--manifest-path"])
                .arg(peers_dir().join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", target_dir())
                // apalis-postgres's query macros would check a live DATABASE_URL.
                .env("SQLX_OFFLINE", "true")
                .env_remove("DATABASE_URL")
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("building the peers failed ({status})"))
            }
        })
        .clone()
}

/// Checks that `program` runs (`program --version`).
fn require(program: &str) -> Result<(), String> {
    let output = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!("the Graphile Worker peer needs Node.js: cannot run `{program}`: {e}")
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the Graphile Worker peer needs Node.js: `{program} --version` failed ({})",
            output.status
        ))
    }
}

/// Prepares `target/peers/graphile/` once per run: the script, and the npm packages of
/// `peers/graphile/package-lock.json` (`npm ci`, only when `node_modules` is missing or
/// the lock differs from the one last installed). Returns the directory.
fn install_graphile() -> Result<PathBuf, String> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            require("node")?;
            let source = peers_dir().join("graphile");
            let dir = target_dir().join("graphile");
            let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
            std::fs::create_dir_all(&dir).map_err(|e| io(&dir.display().to_string(), e))?;
            let lock_file = source.join("package-lock.json");
            let lock =
                std::fs::read(&lock_file).map_err(|e| io(&lock_file.display().to_string(), e))?;
            // A copy of the lock `npm ci` last installed completely.
            let stamp = dir.join("installed-package-lock.json");
            let installed = dir.join("node_modules").is_dir()
                && std::fs::read(&stamp).is_ok_and(|old| old == lock);
            if !installed {
                require("npm")?;
                eprintln!(
                    "installing Graphile Worker's npm packages (npm ci in {})…",
                    dir.display()
                );
                let _ = std::fs::remove_file(&stamp);
                for file in ["package.json", "package-lock.json"] {
                    std::fs::copy(source.join(file), dir.join(file))
                        .map_err(|e| io(&format!("copying {file}"), e))?;
                }
                let status = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    // npm's report would land in the tables on stdout.
                    .stdout(Stdio::from(std::io::stderr()))
                    .status()
                    .map_err(|e| format!("cannot run npm: {e}"))?;
                if !status.success() {
                    return Err(format!("npm ci failed ({status})"));
                }
                std::fs::write(&stamp, &lock).map_err(|e| io("writing the npm stamp", e))?;
            }
            // Beside its node_modules, for Node to resolve its imports.
            std::fs::copy(source.join("peer.mjs"), dir.join("peer.mjs"))
                .map_err(|e| io("copying peer.mjs", e))?;
            Ok(dir)
        })
        .clone()
}

/// A database of its own for `peer` on the server of `url`: its URL.
async fn fresh_database(url: &str, peer: &str) -> Result<String, String> {
    let pool = common::raw_pool(url, 1).await?;
    let name = format!("keel_bench_peer_{peer}");
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .map_err(|e| format!("preparing the database of `{peer}`: {e}"))?;
    }
    pool.close().await;
    let mut parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    parsed.set_path(&name);
    Ok(parsed.to_string())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| e.to_string())?
}

/// Runs `peer` on `job`: its rate (events or jobs per second).
pub async fn run(url: &str, peer: &Peer, job: Job) -> Result<f64, String> {
    let mut command = match peer.program {
        Program::Rust(binary) => {
            let Job::Delivery { producers, .. } = job else {
                return Err(format!("{} runs the delivery job only", peer.name));
            };
            blocking(build).await?;
            let mut command = Command::new(target_dir().join("release").join(binary));
            command.args(["--producers", &producers.to_string()]);
            command
        }
        Program::Graphile(mode) => {
            let dir = blocking(install_graphile).await?;
            let mut command = Command::new("node");
            command
                .current_dir(dir)
                .args(["peer.mjs", job.scenario(), "--mode", mode]);
            if let Job::Delivery { producers, .. } = job {
                command.args(["--producers", &producers.to_string()]);
            }
            command
        }
    };
    let database = fresh_database(url, peer.name).await?;
    command
        .args(["--url", &database])
        .args(["--events", &job.count().to_string()])
        // The peers are given their database; Graphile would fall back on this one.
        .env_remove("DATABASE_URL");
    let output = blocking(move || {
        command
            .output()
            .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))
    })
    .await?;
    rate(peer.name, &output)
}

/// The `events_per_s` of the `PEER` line a peer printed last.
fn rate(name: &str, output: &Output) -> Result<f64, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{name} failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("PEER "))
        .ok_or(format!("{name} printed no PEER line: {stdout}"))?;
    let rate = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("events_per_s="))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or(format!("{name}: no events_per_s in `{line}`"))?;
    for extra in line
        .split_whitespace()
        .filter(|f| f.starts_with("enqueue="))
    {
        println!("  {name}: {extra}");
    }
    Ok(rate)
}

/// A peer of a scenario, with the least ratio Keel aims for against it (if any).
pub type Rival = (&'static Peer, Option<f64>);

/// A peer's rate, or `None` if it could not be measured.
pub struct Measured {
    peer: &'static Peer,
    goal: Option<f64>,
    rate: Option<f64>,
}

/// Runs each peer in turn; one that fails is reported with a warning, not measured.
pub async fn measure(url: &str, rivals: &[Rival], job: Job) -> Vec<Measured> {
    let mut measured = Vec::new();
    for &(peer, goal) in rivals {
        let rate = match run(url, peer, job).await {
            Ok(rate) => Some(rate),
            Err(error) => {
                eprintln!("warning: peer `{}` not measured: {error}", peer.name);
                None
            }
        };
        measured.push(Measured { peer, goal, rate });
    }
    measured
}

/// The peers' rows of a table, with Keel's ratio over each.
pub fn rows(measured: &[Measured], keel_rate: f64, unit: &str) {
    for m in measured {
        match m.rate {
            Some(rate) => common::row(
                m.peer.label,
                rate,
                unit,
                Some((keel_rate / rate, "Keel vs it")),
            ),
            None => common::not_measured(m.peer.label),
        }
    }
}

/// The peers' rates and Keel's ratios into `report`; their goals into `goals`.
pub fn record(measured: &[Measured], keel_rate: f64, report: &mut Report, goals: &mut Vec<String>) {
    for m in measured {
        let Some(rate) = m.rate else { continue };
        let ratio = keel_rate / rate;
        report.set(m.peer.rate_key, rate);
        report.set(m.peer.ratio_key, ratio);
        if let Some(goal) = m.goal {
            goals.push(format!(
                "{} ≥ {goal} {}",
                m.peer.ratio_key,
                verdict(ratio >= goal)
            ));
        }
    }
}
