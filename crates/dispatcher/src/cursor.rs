//! Where the relay's next claim starts in the due order.
//!
//! A claim walks the due deliveries in due order and reads, then skips, every one leased
//! and not yet done. Under a backlog, this process's own leases (its claim buffer, up to
//! eight batches) sit at the head of that order, and every claim read them again: about
//! 1.1 ms of a PostgreSQL claim to skip 2,000. So while claims come back full, the next one
//! starts at the latest due time the last one leased.
//!
//! A claim that starts there can pass over a delivery due earlier: a lease that expired
//! (its process died), a lease released, a commit whose due time is older than the cursor
//! (its transaction began before others that committed first). None of them waits long: a
//! claim starts from the first due delivery at least every [`FROM_START_EVERY`], and when a
//! claim from the cursor comes back short, the rest is claimed from the start at once, so
//! a short claim still means that nothing due was left (which the wake-ups count on).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_orchestrator::outbox::{Claim, Claimed};
use keel_orchestrator::{Backend, Database, Error};
use time::OffsetDateTime;

/// The longest a claim from the cursor passes over deliveries due before it.
pub(crate) const FROM_START_EVERY: Duration = Duration::from_millis(100);

/// The due time the relay's claims start from, shared by its claim loops.
#[derive(Debug, Default)]
pub(crate) struct ClaimCursor {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The latest due time leased by a full claim since the last short one.
    from: Option<OffsetDateTime>,
    /// When a claim last started from the first due delivery.
    from_start_at: Option<Instant>,
}

impl ClaimCursor {
    /// Claims up to `limit` due deliveries without ordering key for `handlers`, leased for
    /// `lease`: from the cursor while that is worth it, else from the first due.
    pub(crate) async fn claim<B: Backend>(
        &self,
        db: &Database<B>,
        limit: u32,
        lease: Duration,
        handlers: &[&str],
    ) -> Result<Vec<Claim>, Error> {
        let from = self.start(Instant::now());
        let mut claimed = B::claim(db, limit, lease, handlers, from).await?;
        let short = |claimed: &Claimed| (claimed.claims.len() as u32) < limit;
        if from.is_some() && short(&claimed) {
            self.start_over(Instant::now());
            let left = limit - claimed.claims.len() as u32;
            let rest = B::claim(db, left, lease, handlers, None).await?;
            claimed.claims.extend(rest.claims);
            claimed.last_due = claimed.last_due.max(rest.last_due);
        }
        self.ended(!short(&claimed), claimed.last_due);
        Ok(claimed.claims)
    }

    /// Where the next claim starts (`None`: from the first due delivery).
    fn start(&self, now: Instant) -> Option<OffsetDateTime> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let recent = state
            .from_start_at
            .is_some_and(|at| now.saturating_duration_since(at) < FROM_START_EVERY);
        match state.from {
            Some(from) if recent => Some(from),
            _ => {
                state.from_start_at = Some(now);
                None
            }
        }
    }

    /// A claim from the cursor came back short: the next ones start from the first due.
    fn start_over(&self, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.from = None;
        state.from_start_at = Some(now);
    }

    /// A claim ended: `full` if it leased all it asked for, `last_due` the latest due time
    /// among what it leased.
    fn ended(&self, full: bool, last_due: Option<OffsetDateTime>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.from = if full { state.from.max(last_due) } else { None };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<OffsetDateTime> {
        Some(OffsetDateTime::from_unix_timestamp(seconds).unwrap())
    }

    #[test]
    fn full_claims_move_the_cursor_and_a_short_one_resets_it() {
        let cursor = ClaimCursor::default();
        let now = Instant::now();
        assert_eq!(
            cursor.start(now),
            None,
            "the first claim starts from the first due"
        );
        cursor.ended(true, at(10));
        assert_eq!(cursor.start(now), at(10));
        cursor.ended(true, at(5));
        assert_eq!(
            cursor.start(now),
            at(10),
            "a sibling's older claim does not move it back"
        );
        cursor.ended(true, at(20));
        assert_eq!(cursor.start(now), at(20));
        cursor.ended(false, at(30));
        assert_eq!(
            cursor.start(now),
            None,
            "a short claim: nothing is left after it"
        );
    }

    #[test]
    fn a_claim_starts_from_the_first_due_at_least_every_interval() {
        let cursor = ClaimCursor::default();
        let now = Instant::now();
        assert_eq!(cursor.start(now), None);
        cursor.ended(true, at(10));
        assert_eq!(cursor.start(now + FROM_START_EVERY / 2), at(10));
        assert_eq!(
            cursor.start(now + FROM_START_EVERY),
            None,
            "due from the start"
        );
        cursor.ended(true, at(20));
        let later = now + FROM_START_EVERY + FROM_START_EVERY / 2;
        assert_eq!(
            cursor.start(later),
            at(20),
            "the interval counts from the last start"
        );
        cursor.start_over(later);
        assert_eq!(cursor.start(later), None);
    }
}
