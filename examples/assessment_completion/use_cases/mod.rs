//! Use cases: each runs one or more units of work and returns a result.

mod complete_assessment;

pub use complete_assessment::{Completion, complete_assessment};
