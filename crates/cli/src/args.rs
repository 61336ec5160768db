//! The command line.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keel::{DeadFilter, EventId};
use time::OffsetDateTime;

/// Operate a Keel database: delivery status, dead letters, purge, migrations,
/// re-publishing to the broker.
#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version,
    propagate_version = true,
    after_help = "Exit codes: 0 done; 1 failed (database unreachable, schema missing or \
                  outdated); 2 wrong command line, or a bulk action not confirmed; 3 nothing \
                  matched."
)]
pub(crate) struct Cli {
    /// The database: postgres://… or sqlite:…; the password is never printed.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub(crate) database_url: Option<String>,

    /// Print JSON (one document; one per line with `status --watch`).
    #[arg(long, global = true)]
    pub(crate) json: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Text,
    Json,
}

impl Cli {
    pub(crate) fn output(&self) -> Output {
        if self.json {
            Output::Json
        } else {
            Output::Text
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Deliveries per handler: pending, in flight, retrying, dead, oldest pending age,
    /// done in the last minute, leases per relay.
    Status(StatusArgs),
    /// The dead letter: list, show, retry, discard.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Removes finished deliveries and old dead letters past their retention.
    Purge(PurgeArgs),
    /// Creates or upgrades Keel's tables.
    Migrate,
    /// Publishes again to the broker every kept event committed since a time (after the
    /// broker lost data): the forwarders' relays send them.
    Republish(RepublishArgs),
    /// Gives a handler deployed after some events their deliveries: every kept event of its
    /// message committed since a time that it has none of (run twice, it creates nothing).
    Backfill(BackfillArgs),
    /// Removes the subscriptions of a handler gone from every binary, with its pending
    /// deliveries; its dead deliveries stay.
    Unsubscribe(UnsubscribeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Refresh every SECONDS (2 if no value) until interrupted.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    pub(crate) watch: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadAction {
    /// Lists dead deliveries, oldest first.
    List(Select),
    /// Shows dead deliveries with every attempt's time and error.
    Show(Select),
    /// Puts dead deliveries back in the queue (attempt numbers count on).
    Retry(Bulk),
    /// Removes dead deliveries and their history.
    Discard(Bulk),
}

/// Which dead deliveries: every filter given must match.
#[derive(Debug, Clone, Args)]
pub(crate) struct Select {
    /// Only the deliveries of this event (or command) id.
    #[arg(value_name = "EVENT_ID")]
    pub(crate) event_id: Option<EventId>,
    /// Only this handler's.
    #[arg(long)]
    pub(crate) handler: Option<String>,
    /// Only those of the event (or command) of this name.
    #[arg(long = "event", value_name = "NAME")]
    pub(crate) message: Option<String>,
    /// Only those whose last error contains this text (case-insensitive).
    #[arg(long = "error", value_name = "TEXT")]
    pub(crate) error: Option<String>,
    /// Only those given up at least this long ago (e.g. 90s, 15m, 2h, 7d).
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub(crate) older_than: Option<Duration>,
    /// Only those given up at most this long ago.
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub(crate) newer_than: Option<Duration>,
    /// At most this many (`list` and `show`: 100 unless given; `retry` and `discard`: all
    /// unless given).
    #[arg(long)]
    pub(crate) limit: Option<u32>,
}

impl Select {
    /// The filter, with `limit` when `--limit` is not given.
    pub(crate) fn filter(&self, limit: u32) -> DeadFilter {
        DeadFilter {
            event_id: self.event_id,
            handler: self.handler.clone(),
            message: self.message.clone(),
            error_contains: self.error.clone(),
            older_than: self.older_than,
            newer_than: self.newer_than,
            limit: self.limit.unwrap_or(limit),
        }
    }

    /// Whether any filter narrows the selection.
    pub(crate) fn narrowed(&self) -> bool {
        self.event_id.is_some()
            || self.handler.is_some()
            || self.message.is_some()
            || self.error.is_some()
            || self.older_than.is_some()
            || self.newer_than.is_some()
    }
}

#[derive(Debug, Args)]
pub(crate) struct Bulk {
    #[command(flatten)]
    pub(crate) select: Select,
    /// Apply to every dead delivery when no filter is given.
    #[arg(long)]
    pub(crate) all: bool,
    /// Do not ask for confirmation (for scripts).
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Remove finished deliveries older than this (e.g. 7d); kept if not given.
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub(crate) done_older_than: Option<Duration>,
    /// Remove dead deliveries given up longer ago than this (e.g. 30d); kept if not given.
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub(crate) dead_older_than: Option<Duration>,
}

#[derive(Debug, Args)]
pub(crate) struct RepublishArgs {
    /// From when: an RFC 3339 time (2026-12-01T08:00:00Z) or an age (2h: two hours ago).
    #[arg(long, value_parser = parse_since)]
    pub(crate) since: OffsetDateTime,
    /// Only this forwarder (default: every `forward:*` handler recorded).
    #[arg(long)]
    pub(crate) handler: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BackfillArgs {
    /// The handler, by its whole name (`keel status` lists them).
    #[arg(long)]
    pub(crate) handler: String,
    /// From when: an RFC 3339 time (2026-12-01T08:00:00Z) or an age (2h: two hours ago).
    #[arg(long, value_parser = parse_since)]
    pub(crate) since: OffsetDateTime,
}

#[derive(Debug, Args)]
pub(crate) struct UnsubscribeArgs {
    /// The handler, by its whole name (`keel status` lists them).
    #[arg(long)]
    pub(crate) handler: String,
    /// Do not ask for confirmation (for scripts).
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
}

fn parse_since(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(time) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(time);
    }
    match humantime::parse_duration(text) {
        Ok(age) => OffsetDateTime::now_utc()
            .checked_sub(time::Duration::try_from(age).map_err(|e| e.to_string())?)
            .ok_or_else(|| format!("`{text}` ago is before any time this program can write")),
        Err(_) => Err(format!(
            "`{text}` is neither an RFC 3339 time (2026-12-01T08:00:00Z) nor an age (2h, 30m)"
        )),
    }
}
