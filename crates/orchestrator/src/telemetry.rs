//! The metrics Keel records, through the [`metrics`] facade: the application installs the
//! exporter it wants (Prometheus, StatsD, OpenTelemetry…); without one, recording costs a
//! few atomic loads and nothing is kept.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `keel_unit_of_work_attempts_total` | counter | `name` | attempts of the application's units of work (first runs and re-runs; Keel's own are left out) |
//! | `keel_unit_of_work_retries_total` | counter | `name`, `cause` | re-runs after a transient failure, by cause |
//! | `keel_deliveries_done_total` | counter | `handler` | deliveries handled |
//! | `keel_deliveries_failed_total` | counter | `handler` | failed attempts |
//! | `keel_deliveries_retried_total` | counter | `handler` | failed attempts with another one scheduled |
//! | `keel_deliveries_dead_total` | counter | `handler` | deliveries moved to the dead letter |
//! | `keel_delivery_duration_seconds` | histogram | `handler` | one attempt, from its start to its outcome |
//! | `keel_group_commit_members` | histogram | | units of work per committed group ([`GroupCommit`](crate::GroupCommit)) |
//! | `keel_group_commits_undone_total` | counter | | groups rolled back, whose members then ran again alone |
//! | `keel_backlog` | gauge | `handler` | deliveries not finished (pending, in flight, retrying) |
//! | `keel_oldest_pending_seconds` | gauge | `handler` | age of the oldest unfinished delivery's event |
//! | `keel_dead_letters` | gauge | `handler` | deliveries in the dead letter |
//! | `keel_unrouted_events` | gauge | | events no relay has routed yet |
//!
//! Counters and the histogram are recorded where things happen; the gauges are read from
//! the database by each relay at every [`HEARTBEAT`](crate::operations::HEARTBEAT) (10 s)
//! ([`record_status`]), so every process exports the same figures: take one series per
//! label set (e.g. `max by (handler)`), not their sum.

use std::borrow::Cow;

use crate::Error;
use crate::operations::Status;

/// Counts one attempt of the unit of work `name`.
pub(crate) fn unit_of_work_attempt(name: &'static str) {
    metrics::counter!("keel_unit_of_work_attempts_total", "name" => name).increment(1);
}

/// Counts a re-run of the unit of work `name` after `error`.
pub(crate) fn unit_of_work_retry(name: &'static str, error: &Error) {
    metrics::counter!("keel_unit_of_work_retries_total", "name" => name, "cause" => cause(error))
        .increment(1);
}

/// The `cause` label of a transient error.
fn cause(error: &Error) -> &'static str {
    match error {
        Error::VersionConflict { .. } => "version_conflict",
        Error::LockTimeout { .. } => "lock_timeout",
        Error::RowLocked { .. } => "row_locked",
        Error::Deadlock(_) => "deadlock",
        Error::SerializationFailure(_) => "serialization_failure",
        Error::ConnectionLost(_) => "connection_lost",
        _ => "other",
    }
}

/// Records how a group of units of work ended: committed with `members`, or undone.
pub(crate) fn group_commit(members: usize, committed: bool) {
    if committed {
        metrics::histogram!("keel_group_commit_members").record(members as f64);
    } else {
        metrics::counter!("keel_group_commits_undone_total").increment(1);
    }
}

/// How one attempt of a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handled.
    Done,
    /// Failed; another attempt is scheduled.
    Retried,
    /// Failed for good: moved to the dead letter.
    Dead,
}

/// Records the outcome of `count` deliveries to `handler` whose attempt took `elapsed`.
/// A registered handler's name is `'static`: borrowed, it costs the hot path no allocation.
pub fn delivery(
    handler: Cow<'static, str>,
    count: usize,
    outcome: Outcome,
    elapsed: std::time::Duration,
) {
    let count = count as u64;
    match outcome {
        Outcome::Done => {
            metrics::counter!("keel_deliveries_done_total", "handler" => handler.clone())
                .increment(count);
        }
        Outcome::Retried | Outcome::Dead => {
            metrics::counter!("keel_deliveries_failed_total", "handler" => handler.clone())
                .increment(count);
            let name = if outcome == Outcome::Dead {
                "keel_deliveries_dead_total"
            } else {
                "keel_deliveries_retried_total"
            };
            metrics::counter!(name, "handler" => handler.clone()).increment(count);
        }
    }
    metrics::histogram!("keel_delivery_duration_seconds", "handler" => handler)
        .record(elapsed.as_secs_f64());
}

/// Records one claim of a relay, which found `found` deliveries (or batches) due. Claims
/// that find nothing still cost the database a claim: their rate is the relay's idle polling.
pub fn relay_claim(found: usize) {
    let found = if found == 0 { "none" } else { "some" };
    metrics::counter!("keel_relay_claims_total", "found" => found).increment(1);
}

/// Sets the gauges from a status read ([`crate::operations::Status`]).
pub fn record_status(status: &Status) {
    for h in &status.handlers {
        let handler = h.handler.clone();
        metrics::gauge!("keel_backlog", "handler" => handler.clone())
            .set((h.pending + h.in_flight + h.retrying) as f64);
        metrics::gauge!("keel_oldest_pending_seconds", "handler" => handler.clone())
            .set(h.oldest_pending_ms.unwrap_or(0) as f64 / 1000.0);
        metrics::gauge!("keel_dead_letters", "handler" => handler).set(h.dead as f64);
    }
    metrics::gauge!("keel_unrouted_events").set(status.unrouted as f64);
}
