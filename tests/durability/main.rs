//! Nothing committed is lost: the outbox, the relay, per-handler delivery state, the dead
//! letter and the processed marker, under crashes, restarts, competing relays and bad input.
//!
//! `crash::child` and `restart::*` are `#[ignore]`d: the first is the child process the
//! kill -9 test starts, the second restarts the shared PostgreSQL server and runs on its
//! own (`scripts/test.sh` runs it after the suite).

mod crash;
mod inbox;
mod ordering;
mod poison;
mod relays;
mod restart;
mod retention;
mod retries;
mod support;
