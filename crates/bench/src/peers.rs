//! The peers of the `delivery` scenario: the same job written with other Rust job
//! queues on PostgreSQL (`crates/bench/peers/`, a workspace of its own because those
//! libraries pin other sqlx versions). The harness builds them on first use, gives each a
//! fresh database on the same server, runs it, and reads its `PEER … events_per_s=…` line.

use std::path::PathBuf;
use std::process::Command;

use keel::sqlx;

/// The peers measured, by binary name.
pub const PEERS: &[&str] = &["sqlxmq", "apalis"];

/// How a peer is named in tables.
pub fn label(peer: &str) -> &'static str {
    match peer {
        "apalis" => "apalis (PostgreSQL storage)",
        _ => "sqlxmq",
    }
}

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The peers' target directory, beside the workspace's.
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/peers")
}

/// Builds the peers (release) once per run; the first build takes a few minutes.
fn build() -> Result<(), String> {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
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

/// A database of its own for `peer` on the server of `url`: its URL.
async fn fresh_database(url: &str, peer: &str) -> Result<String, String> {
    let pool = crate::common::raw_pool(url, 1).await?;
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

/// Runs `peer` on `events` events with `producers` producers; its events per second.
pub async fn run(url: &str, peer: &str, events: u64, producers: u64) -> Result<f64, String> {
    tokio::task::spawn_blocking(build)
        .await
        .map_err(|e| e.to_string())??;
    let database = fresh_database(url, peer).await?;
    let binary = target_dir().join("release").join(peer);
    let mut command = Command::new(&binary);
    command
        .args(["--url", &database])
        .args(["--events", &events.to_string()])
        .args(["--producers", &producers.to_string()]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{peer} failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("PEER "))
        .ok_or(format!("{peer} printed no PEER line: {stdout}"))?;
    let rate = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("events_per_s="))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or(format!("{peer}: no events_per_s in `{line}`"))?;
    for extra in line
        .split_whitespace()
        .filter(|f| f.starts_with("enqueue="))
    {
        println!("  {peer}: {extra}");
    }
    Ok(rate)
}
