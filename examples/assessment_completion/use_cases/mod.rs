//! Use cases: each runs one or more units of work and returns a result. They are generic
//! over the backend `B` and written against the ports (`crate::ports`), never against SQL.

mod complete_assessment;

pub use complete_assessment::{Completion, complete_assessment};
