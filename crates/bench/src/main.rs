//! `keel-bench`: measures Keel and its baselines in the same run and reports ratios.
//!
//! ```text
//! cargo run --release -p keel-bench -- <scenario> [--json FILE] [--likes N]
//! ```
//!
//! Without `DATABASE_URL`, it starts a throwaway PostgreSQL cluster of its own (as the test
//! command does) and stops it at the end. Each scenario prints a table and a last line
//! `RESULT <scenario> key=value …`; `--json FILE` writes the same figures.
//!
//! Absolute numbers drift on shared machines; the ratios against baselines measured in
//! the same run are the figures to compare.

mod cluster;
mod likes;

use std::collections::BTreeMap;
use std::process::ExitCode;

/// Figures of one scenario, printed as the `RESULT` line and written as JSON.
pub struct Report {
    scenario: &'static str,
    figures: BTreeMap<&'static str, f64>,
}

impl Report {
    fn new(scenario: &'static str) -> Self {
        Report {
            scenario,
            figures: BTreeMap::new(),
        }
    }

    fn set(&mut self, key: &'static str, value: f64) {
        self.figures.insert(key, value);
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
    likes: u32,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        scenario: String::new(),
        json: None,
        likes: 10_000,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => parsed.json = Some(args.next().ok_or("--json needs a file name")?),
            "--likes" => {
                let n = args.next().ok_or("--likes needs a number")?;
                parsed.likes = n
                    .parse()
                    .map_err(|_| format!("--likes: `{n}` is not a number"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown option `{other}`")),
            other => parsed.scenario = other.to_owned(),
        }
    }
    if parsed.scenario.is_empty() {
        return Err("name a scenario".to_owned());
    }
    Ok(parsed)
}

const USAGE: &str = "usage: keel-bench <scenario> [--json FILE] [--likes N]

scenarios:
  likes   N users like one post: a unit of work with a row lock per like (A) vs the command
          bus with batches (B), against the hot-row SELECT ... FOR UPDATE; UPDATE rate of
          raw sqlx (the pgbench baseline), all measured in this run";

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
    let cluster = match std::env::var("DATABASE_URL") {
        Ok(url) => cluster::Server::External(url),
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
    let report = match args.scenario.as_str() {
        "likes" => likes::run(cluster.url(), args.likes).await,
        other => Err(format!(
            "unknown scenario `{other}`; this version measures: likes"
        )),
    };
    drop(cluster);
    match report {
        Ok(report) => {
            println!("{}", report.result_line());
            if let Some(file) = args.json {
                let json = serde_json::json!({
                    "scenario": report.scenario,
                    "figures": report.figures,
                });
                if let Err(error) = std::fs::write(&file, format!("{json:#}\n")) {
                    eprintln!("error: cannot write {file}: {error}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
