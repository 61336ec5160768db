//! The program's configuration: two flags and the environment, read and checked once at
//! start, so that a missing or malformed value stops it with one line naming the variable.
//!
//! | variable | default | what |
//! |---|---|---|
//! | `DATABASE_URL` | the story: a fresh SQLite file; serving: required | `postgres://…` (TLS with `?sslmode=require`) or `sqlite:…` |
//! | `LISTEN_ADDRESS` | `127.0.0.1:3000` | where the service listens (`--serve ADDRESS` wins) |
//! | `PARTNER_URL` | an in-process stub | the partner's base URL (`http://` or `https://`) |
//! | `PARTNER_STUB_FAILURE_RATE` | `0` | without `PARTNER_URL`: the share of calls the stub refuses (0 to 1) |
//! | `DATABASE_POOL_SIZE` | `10` | connections in the pool |
//! | `DATABASE_ACQUIRE_TIMEOUT` | `2s` | how long a request waits for a connection |
//! | `REQUEST_TIMEOUT` | `10s` | past it, a request is answered `503` |
//! | `SHUTDOWN_TIMEOUT` | `20s` | on SIGTERM, how long in-flight requests and deliveries may take |
//!
//! Durations are written `500ms`, `2s`, `1m`.

use std::net::SocketAddr;
use std::time::Duration;

/// What to do and with what.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Serve HTTP (`--serve`) rather than tell the story.
    pub serve: bool,
    /// Insert the demo rows when the database has none (`--seed`; the story always does).
    pub seed: bool,
    /// `DATABASE_URL`, if set.
    pub database_url: Option<String>,
    pub listen_address: SocketAddr,
    /// `None`: an in-process stub stands in for the partner.
    pub partner_url: Option<String>,
    pub partner_stub_failure_rate: f64,
    pub database_pool_size: u32,
    pub database_acquire_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// The usage line printed with a wrong argument.
pub const USAGE: &str = "usage: assessment_completion [--serve [ADDRESS]] [--seed]";

impl Config {
    /// From the process's arguments and environment.
    pub fn load() -> Result<Config, String> {
        Config::from(std::env::args().skip(1), |name| std::env::var(name).ok())
    }

    /// From `args` (without the program's name) and the variables `env` gives.
    pub fn from(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        let (mut serve, mut seed, mut address) = (false, false, None);
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--serve" => {
                    serve = true;
                    address = args.next_if(|next| !next.starts_with("--"));
                }
                "--seed" => seed = true,
                other => return Err(format!("unknown argument `{other}`; {USAGE}")),
            }
        }
        let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        let parsed = |name: &'static str, default: &str| {
            (var(name).unwrap_or_else(|| default.to_owned()), name)
        };
        let database_url = var("DATABASE_URL");
        if serve && database_url.is_none() {
            return Err(
                "DATABASE_URL is not set: the service needs a database that outlives \
                        it (e.g. sqlite:assessments.db or postgres://user@host/db)"
                    .to_owned(),
            );
        }
        let (listen, name) = parsed("LISTEN_ADDRESS", "127.0.0.1:3000");
        let listen_address = address
            .map(|a| (a, "--serve ADDRESS"))
            .unwrap_or((listen, name));
        Ok(Config {
            serve,
            seed,
            database_url,
            listen_address: listen_address
                .0
                .parse()
                .map_err(|_| invalid(listen_address.1, &listen_address.0, "a host:port"))?,
            partner_url: var("PARTNER_URL").map(http_url).transpose()?,
            partner_stub_failure_rate: rate(parsed("PARTNER_STUB_FAILURE_RATE", "0"))?,
            database_pool_size: pool_size(parsed("DATABASE_POOL_SIZE", "10"))?,
            database_acquire_timeout: duration(parsed("DATABASE_ACQUIRE_TIMEOUT", "2s"))?,
            request_timeout: duration(parsed("REQUEST_TIMEOUT", "10s"))?,
            shutdown_timeout: duration(parsed("SHUTDOWN_TIMEOUT", "20s"))?,
        })
    }
}

fn invalid(name: &str, value: &str, expected: &str) -> String {
    let shown: String = value.chars().take(60).collect();
    format!("{name}=`{shown}` is not {expected}")
}

fn http_url(value: String) -> Result<String, String> {
    match url::Url::parse(&value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(value.trim_end_matches('/').to_owned())
        }
        _ => Err(invalid("PARTNER_URL", &value, "an http:// or https:// URL")),
    }
}

fn rate((value, name): (String, &str)) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(invalid(name, &value, "a number from 0 to 1")),
    }
}

fn pool_size((value, name): (String, &str)) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(size) if (1..=1000).contains(&size) => Ok(size),
        _ => Err(invalid(name, &value, "a pool size from 1 to 1000")),
    }
}

/// `500ms`, `2s`, `1m`, `1h`.
fn duration((value, name): (String, &str)) -> Result<Duration, String> {
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| invalid(name, &value, "a duration such as 500ms, 2s or 1m"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid(name, &value, "a duration such as 500ms, 2s or 1m")),
    };
    let millis = number
        .checked_mul(unit_ms)
        .filter(|&ms| ms > 0)
        .ok_or_else(|| invalid(name, &value, "a duration above zero and below a year"))?;
    Ok(Duration::from_millis(millis))
}
