//! `keel-bench`: measures Keel and its baselines in the same run and reports ratios.
//!
//! ```text
//! cargo run --release -p keel-bench -- <scenario> [--json FILE] [--svg DIR] [options]
//! ```
//!
//! Without `DATABASE_URL`, it starts a throwaway PostgreSQL cluster of its own (as the test
//! command does) and stops it at the end. Each scenario prints a table and a last line
//! `RESULT <scenario> key=value …`; `--json FILE` writes the same figures, `--svg DIR` the
//! charts of the scenarios that draw one. `all` runs every scenario in turn.
//!
//! Absolute numbers drift on shared machines; the ratios against baselines measured in
//! the same run are the figures to compare.

mod chart;
mod cluster;
mod common;
mod delivery;
mod drain;
mod grouping;
mod latency;
mod likes;
mod nats;
mod peers;
mod scale_out;
mod sqlite;
mod uow;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Figures of one scenario, printed as the `RESULT` line and written as JSON.
pub struct Report {
    scenario: &'static str,
    figures: BTreeMap<String, f64>,
}

impl Report {
    fn new(scenario: &'static str) -> Self {
        Report {
            scenario,
            figures: BTreeMap::new(),
        }
    }

    fn set(&mut self, key: impl Into<String>, value: f64) {
        self.figures.insert(key.into(), value);
    }

    fn result_line(&self) -> String {
        let figures: Vec<String> = self
            .figures
            .iter()
            .map(|(k, v)| format!("{k}={}", round(*v)))
            .collect();
        format!("RESULT {} {}", self.scenario, figures.join(" "))
    }
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 100.0).round() / 100.0
    }
}

struct Args {
    scenario: String,
    json: Option<String>,
    svg: Option<PathBuf>,
    likes: u32,
    events: u64,
    producers: u64,
    drain: u64,
    latency: u64,
    peers: bool,
}

fn number<T: std::str::FromStr>(
    option: &str,
    args: &mut impl Iterator<Item = String>,
) -> Result<T, String> {
    let n = args.next().ok_or(format!("{option} needs a number"))?;
    n.parse()
        .map_err(|_| format!("{option}: `{n}` is not a number"))
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        scenario: String::new(),
        json: None,
        svg: None,
        likes: 10_000,
        events: 20_000,
        producers: 8,
        drain: 100_000,
        latency: 2_000,
        peers: true,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => parsed.json = Some(args.next().ok_or("--json needs a file name")?),
            "--svg" => {
                parsed.svg = Some(PathBuf::from(args.next().ok_or("--svg needs a directory")?))
            }
            "--likes" => parsed.likes = number("--likes", &mut args)?,
            "--events" => parsed.events = number("--events", &mut args)?,
            "--producers" => parsed.producers = number("--producers", &mut args)?,
            "--backlog" => parsed.drain = number("--backlog", &mut args)?,
            "--samples" => parsed.latency = number("--samples", &mut args)?,
            "--no-peers" => parsed.peers = false,
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown option `{other}`")),
            other => parsed.scenario = other.to_owned(),
        }
    }
    if parsed.scenario.is_empty() {
        return Err("name a scenario".to_owned());
    }
    if parsed.events == 0 || parsed.producers == 0 || parsed.drain == 0 || parsed.latency == 0 {
        return Err("counts must be at least 1".to_owned());
    }
    Ok(parsed)
}

const USAGE: &str = "usage: keel-bench <scenario> [--json FILE] [--svg DIR] [options]

scenarios (each prints a table and a last line RESULT <scenario> key=value ...):
  uow       a unit of work (UPDATE one row + record one event) vs the same statements in
            raw sqlx, 8 tasks: ratio = Keel/raw time per op (goal <= 1.02)
  delivery  events/s from commit to handler effect, N producers: Keel vs a hand-written
            sqlx pipeline (the ceiling), the same pipeline with grouped consumers beside
            its producers alone, Keel's producers alone (no delivery), sqlxmq,
            apalis and Graphile Worker (goals: vs_raw >= 0.8, vs_producer_only >= 0.9,
            vs_apalis >= 2, vs_sqlxmq >= 2, vs_graphile_batched >= 2); with --svg,
            throughput vs producers
  drain     a backlog of pending deliveries drained by the relay vs the server's batched
            SKIP LOCKED dequeue rate and Graphile Worker draining as many jobs (goals:
            >= 100,000/s and >= 0.5x the limit, vs_graphile_batched >= 1.5)
  likes     N users like one post: unit of work + row lock (A) vs the command bus with
            batches (B), against the hot-row SELECT ... FOR UPDATE; UPDATE rate (goal B >= 5x)
  latency   commit -> handler start, p50/p99, in-process and cross-process (goals: p50 <= 1 ms
            in-process, p99 <= 20 ms cross-process); with --svg, the distribution. Then
            commit -> handler's effect committed with group commit off, with savepoints
            and optimistic, one producer and four (what grouping costs in latency)
  nats      commit -> handler start in another service through NATS JetStream (a throwaway
            nats-server; goal p99 <= 20 ms), then 1, 2 and 4 consumer processes sharing
            the work of a 5 ms handler (goal: 4 processes >= 3.5x one)
  sqlite    uow and delivery on SQLite vs raw sqlx on SQLite (goals: uow ratio <= 1.05,
            delivery vs_raw >= 0.9)
  all       every scenario above, in this order

options:
  --events N      events of uow, delivery and sqlite (20000)
  --producers N   producers of delivery (8)
  --backlog N     pending deliveries of drain (100000)
  --likes N       likes of likes (10000)
  --samples N     events of latency (2000)
  --no-peers      skip the peers of delivery and drain: sqlxmq and apalis (built on
                  first use) and Graphile Worker (needs node and npm; npm ci on first use)
  --json FILE     write the figures as JSON
  --svg DIR       write the charts (SVG) into DIR

Without DATABASE_URL, a throwaway PostgreSQL cluster is started and stopped.";

const SCENARIOS: &[&str] = &[
    "uow", "delivery", "drain", "likes", "latency", "nats", "sqlite",
];

async fn run(scenario: &str, url: &str, args: &Args) -> Result<Report, String> {
    let svg = args.svg.as_deref();
    if scenario != "sqlite" {
        // Keel's tables first: the baselines reset them before Keel connects.
        common::keel_database(url, 2)
            .await?
            .close()
            .await
            .map_err(|e| e.to_string())?;
    }
    match scenario {
        "uow" => uow::run(url, args.events).await,
        "delivery" => delivery::run(url, args.events, args.producers, svg, args.peers).await,
        "drain" => drain::run(url, args.drain, args.peers).await,
        "likes" => likes::run(url, args.likes).await,
        "latency" => latency::run(url, args.latency, svg).await,
        "nats" => nats::run(url, args.latency).await,
        "sqlite" => sqlite::run(args.events).await,
        other => Err(format!(
            "unknown scenario `{other}`; scenarios: {}, all",
            SCENARIOS.join(", ")
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("error: {problem}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let scenarios: Vec<&str> = match args.scenario.as_str() {
        "all" => SCENARIOS.to_vec(),
        "scale-out-worker" => {
            // A child process of the scale-out measure.
            let Ok(url) = std::env::var("DATABASE_URL") else {
                eprintln!("error: scale-out-worker needs DATABASE_URL");
                return ExitCode::FAILURE;
            };
            return match scale_out::worker(&url).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        "latency-consumer" => {
            // The child process of the cross-process latency measure.
            let Ok(url) = std::env::var("DATABASE_URL") else {
                eprintln!("error: latency-consumer needs DATABASE_URL");
                return ExitCode::FAILURE;
            };
            return match latency::consumer(&url, args.latency).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        one if SCENARIOS.contains(&one) => vec![one],
        other => {
            eprintln!(
                "error: unknown scenario `{other}`; scenarios: {}, all\n\n{USAGE}",
                SCENARIOS.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &args.svg
        && let Err(error) = std::fs::create_dir_all(dir)
    {
        eprintln!("error: cannot create {}: {error}", dir.display());
        return ExitCode::FAILURE;
    }
    let needs_server = scenarios.iter().any(|s| *s != "sqlite");
    let cluster = match std::env::var("DATABASE_URL") {
        Ok(url) => cluster::Server::External(url),
        Err(_) if !needs_server => cluster::Server::External(String::new()),
        Err(_) => {
            eprintln!("DATABASE_URL is not set: starting a throwaway PostgreSQL cluster");
            match cluster::Cluster::start() {
                Ok(cluster) => cluster::Server::Throwaway(cluster),
                Err(error) => {
                    eprintln!("error: cannot start PostgreSQL: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let mut reports = Vec::new();
    let mut failed = false;
    for scenario in scenarios {
        eprintln!("running `{scenario}`…");
        match run(scenario, cluster.url(), &args).await {
            Ok(report) => {
                println!("{}", report.result_line());
                reports.push(report);
            }
            Err(error) => {
                eprintln!("error: {scenario}: {error}");
                failed = true;
            }
        }
    }
    drop(cluster);
    if let Some(file) = &args.json {
        let figures =
            |r: &Report| serde_json::json!({"scenario": r.scenario, "figures": r.figures});
        let json = match reports.as_slice() {
            [one] if args.scenario != "all" => figures(one),
            all => serde_json::Value::Array(all.iter().map(figures).collect()),
        };
        if let Err(error) = std::fs::write(file, format!("{json:#}\n")) {
            eprintln!("error: cannot write {file}: {error}");
            return ExitCode::FAILURE;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
