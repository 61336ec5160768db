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
//! claim from the cursor comes back short, the rest is claimed from the first due at once,
//! so a short claim still means that nothing due was left (which the wake-ups count on).
//! A claim from the first due that comes back full may have left more behind it (a crashed
//! process's thousands of leases expiring at once): the cursor moves back to where that
//! claim ended, and the claims after it sweep forward from there.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_orchestrator::outbox::Claim;
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
    /// Where claims start: the latest due time leased since the cursor last moved back.
    from: Option<OffsetDateTime>,
    /// Counts the moves back, so that a claim begun before one cannot undo it.
    moved_back: u64,
    /// When a claim last started from the first due delivery.
    from_start_at: Option<Instant>,
}

/// Where one claim started: from the cursor as it was after `moved_back` moves back, or
/// from the first due delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Cursor(OffsetDateTime, u64),
    First,
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
        let start = self.start(Instant::now());
        let from = match start {
            Start::Cursor(from, _) => Some(from),
            Start::First => None,
        };
        let claimed = B::claim(db, limit, lease, handlers, from).await?;
        let got = claimed.claims.len() as u32;
        self.ended(start, got == limit, claimed.last_due);
        if from.is_none() || got == limit {
            return Ok(claimed.claims);
        }
        // Short from the cursor: the rest from the first due, so that a short claim still
        // means nothing due is left.
        let mut claims = claimed.claims;
        let start = self.start_over(Instant::now());
        match B::claim(db, limit - got, lease, handlers, None).await {
            Ok(rest) => {
                self.ended(
                    start,
                    rest.claims.len() as u32 == limit - got,
                    rest.last_due,
                );
                claims.extend(rest.claims);
            }
            // The first part is leased: run it rather than leave it to its lease's end.
            Err(error) if !claims.is_empty() => {
                tracing::debug!(%error, "claiming from the first due failed");
            }
            Err(error) => return Err(error),
        }
        Ok(claims)
    }

    /// Where the next claim starts.
    fn start(&self, now: Instant) -> Start {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let recent = state
            .from_start_at
            .is_some_and(|at| now.saturating_duration_since(at) < FROM_START_EVERY);
        match state.from {
            Some(from) if recent => Start::Cursor(from, state.moved_back),
            _ => {
                state.from_start_at = Some(now);
                Start::First
            }
        }
    }

    /// A claim from the cursor came back short: the rest is claimed from the first due.
    fn start_over(&self, now: Instant) -> Start {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.from_start_at = Some(now);
        Start::First
    }

    /// A claim that began at `start` ended: `full` if it leased all it asked for,
    /// `last_due` the latest due time among what it leased.
    fn ended(&self, start: Start, full: bool, last_due: Option<OffsetDateTime>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match start {
            // Full from the first due: more may be due before the cursor. Sweep from here.
            Start::First if full => {
                state.from = last_due;
                state.moved_back += 1;
            }
            // Short from the first due: nothing due is left before where it ended.
            Start::First => state.from = None,
            Start::Cursor(_, moved_back) if full && moved_back == state.moved_back => {
                state.from = state.from.max(last_due);
            }
            // A short claim from the cursor is followed by one from the first due, and a
            // claim begun before the cursor moved back must not move it on again.
            Start::Cursor(..) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<OffsetDateTime> {
        Some(OffsetDateTime::from_unix_timestamp(seconds).unwrap())
    }

    fn cursor_at(start: Start) -> Option<OffsetDateTime> {
        match start {
            Start::Cursor(from, _) => Some(from),
            Start::First => None,
        }
    }

    #[test]
    fn full_claims_move_the_cursor_and_a_short_one_from_the_first_due_resets_it() {
        let cursor = ClaimCursor::default();
        let now = Instant::now();
        let first = cursor.start(now);
        assert_eq!(
            first,
            Start::First,
            "the first claim starts from the first due"
        );
        cursor.ended(first, true, at(10));
        let a = cursor.start(now);
        let b = cursor.start(now);
        assert_eq!(cursor_at(a), at(10));
        cursor.ended(b, true, at(20));
        cursor.ended(a, true, at(15));
        assert_eq!(
            cursor_at(cursor.start(now)),
            at(20),
            "a sibling's older claim does not move it back"
        );
        let short = cursor.start_over(now);
        cursor.ended(short, false, at(30));
        assert_eq!(cursor.start(now), Start::First, "nothing is left before it");
    }

    #[test]
    fn a_full_claim_from_the_first_due_moves_the_cursor_back() {
        let cursor = ClaimCursor::default();
        let now = Instant::now();
        cursor.ended(cursor.start(now), true, at(100));
        let before = cursor.start(now);
        // Deliveries due before the cursor fill a claim from the first due (a crashed
        // process's leases expired): the next claims sweep on from where it ended.
        let swept = cursor.start_over(now);
        cursor.ended(swept, true, at(40));
        // A claim begun from the cursor before the move back does not undo it.
        cursor.ended(before, true, at(120));
        assert_eq!(cursor_at(cursor.start(now)), at(40));
    }

    #[test]
    fn a_claim_starts_from_the_first_due_at_least_every_interval() {
        let cursor = ClaimCursor::default();
        let now = Instant::now();
        cursor.ended(cursor.start(now), true, at(10));
        assert_eq!(cursor_at(cursor.start(now + FROM_START_EVERY / 2)), at(10));
        let periodic = cursor.start(now + FROM_START_EVERY);
        assert_eq!(periodic, Start::First, "due from the first");
        cursor.ended(periodic, true, at(20));
        let later = now + FROM_START_EVERY + FROM_START_EVERY / 2;
        assert_eq!(
            cursor_at(cursor.start(later)),
            at(20),
            "the interval counts from the last start"
        );
    }
}
