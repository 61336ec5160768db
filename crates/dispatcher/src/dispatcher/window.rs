//! The relay's claim window: how much a claim takes, and when freed room is worth one.
//!
//! Claimed deliveries wait in a local buffer for a free slot, so that the slots never idle
//! while the next claim runs; the buffer is sized from the deliveries ended per second and
//! a claim's round trip, and a claim is worth its round trip only when half of one fits.

use std::sync::atomic::Ordering;

use keel_orchestrator::Backend;

use super::Dispatcher;

/// The claim buffer's largest size, in batches (see [`Dispatcher::claim_room`]).
const MAX_BUFFER_BATCHES: u32 = 8;

/// The claim buffer for batches of `batch`: what the slots get through during four claims'
/// round trips (an average claim time, and claims vary), at least one batch and at most
/// [`MAX_BUFFER_BATCHES`].
fn buffer_for(batch: u32, ended_per_sec: f64, claim_secs: f64) -> u32 {
    let covering = ended_per_sec * claim_secs * 4.0;
    let covering = if covering.is_finite() {
        covering.clamp(0.0, f64::from(u32::MAX)) as u32
    } else {
        0
    };
    covering.clamp(batch, batch.saturating_mul(MAX_BUFFER_BATCHES))
}

/// The most one claim takes: a batch, or a quarter of a buffer grown larger.
fn claim_size_for(batch: u32, buffer: u32) -> u32 {
    batch.max(buffer / 4)
}

impl<B: Backend> Dispatcher<B> {
    /// Room left in the relay's claim window: claimed deliveries wait in a local buffer for
    /// a free slot, so the slots never idle while the next claim runs. The buffer holds
    /// one batch, or what the slots get through during four claims' round trips when that
    /// is more (fast handlers), up to [`MAX_BUFFER_BATCHES`] batches: enough to cover a
    /// claim, and no more, so that a process does not hoard deliveries other processes
    /// could run. Deliveries that wait only for their done mark hold no room, up to one
    /// buffer of them: their marks are written together while the next claim runs.
    pub(crate) fn claim_room(&self) -> u32 {
        let options = &self.inner.options;
        let buffer = self.inner.buffer.load(Ordering::Relaxed);
        let window = (options.max_in_flight as u32).saturating_add(buffer);
        let marking = self.inner.marks.pending().min(buffer as usize);
        let holding = self.inner.running.count().saturating_sub(marking);
        window.saturating_sub(holding.min(u32::MAX as usize) as u32)
    }

    /// A delivery ended, or now waits only for its done mark: the room it frees is worth a
    /// claim only if one was held back for want of it. A `keyed` one may also have made its
    /// key's next delivery due: it wakes the relay, or, with no room yet, records work held
    /// back so that the next delivery freeing room does.
    pub(crate) fn room_freed(&self, keyed: bool) {
        let wake = &self.inner.wake;
        match (keyed, self.claim_room() >= self.claim_worth()) {
            (true, true) => wake.wake(),
            (true, false) => wake.held_back(),
            (false, true) => wake.room_freed(),
            (false, false) => {}
        }
    }

    /// Sizes the claim buffer from the deliveries ended per second and a claim's round
    /// trip (see [`Dispatcher::claim_room`]).
    pub(crate) fn pace_buffer(&self, ended_per_sec: f64, claim_secs: f64) {
        let buffer = buffer_for(self.inner.options.batch_size, ended_per_sec, claim_secs);
        self.inner.buffer.store(buffer, Ordering::Relaxed);
    }

    /// The most the next claim takes: a batch, or a quarter of the claim buffer when fast
    /// handlers have grown it, so that a relay keeping thousands of deliveries ahead pays
    /// fewer claims (each a round trip and a commit) for them.
    pub(crate) fn claim_size(&self) -> u32 {
        claim_size_for(
            self.inner.options.batch_size,
            self.inner.buffer.load(Ordering::Relaxed),
        )
    }

    /// The least room worth a claim: a claim of a handful of rows costs the server nearly
    /// what a full one does, so the relay claims when half a claim fits. The buffer still
    /// holds the other half then, so the slots do not idle while the claim runs.
    pub(crate) fn claim_worth(&self) -> u32 {
        (self.claim_size() / 2).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::{buffer_for, claim_size_for};

    #[test]
    fn a_claim_takes_a_batch_or_a_quarter_of_a_grown_buffer() {
        // Slow handlers keep one batch ahead: claims of a batch, as before.
        assert_eq!(claim_size_for(250, 250), 250);
        // A fast drain keeping 8 batches ahead claims 2 batches at a time.
        assert_eq!(claim_size_for(250, 2_000), 500);
    }

    #[test]
    fn the_claim_buffer_covers_four_claims_of_fast_handlers_and_one_batch_of_slow_ones() {
        // Slow handlers (64 slots of 100 ms) and a 5 ms claim: one batch, as before.
        assert_eq!(buffer_for(250, 640.0, 0.005), 250);
        // A drain at 30,000 a second with 10 ms claims: what four claims' round trips take.
        assert_eq!(buffer_for(250, 30_000.0, 0.010), 1_200);
        // Never more than 8 batches, however fast, and nothing odd before any measure.
        assert_eq!(buffer_for(250, 1e9, 1.0), 2_000);
        assert_eq!(buffer_for(250, 0.0, 0.0), 250);
        assert_eq!(buffer_for(250, f64::NAN, 0.01), 250);
    }
}
