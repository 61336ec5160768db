//! After-commit reactions. Each handler is independent: it runs after the completion has
//! committed, in its own unit of work, and its failure never undoes the completion.

mod user_statistics;
