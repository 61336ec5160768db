//! After-commit reactions. Each handler is independent: it runs after the completion has
//! committed, in its own unit of work, is retried on its own, and its failure never undoes
//! the completion. Each is generic over the backend and registered where it is defined,
//! once per backend (`keel::register_handler!(Event => handler::<sqlx::Postgres>)`).

mod partner_certification;
mod partner_notification;
mod user_statistics;
