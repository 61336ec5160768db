//! Infrastructure: the schema, the repositories and the partner's HTTP client. Repositories take `&mut Tx`, so they can
//! only run inside a unit of work, on its connection.

pub mod partner;
pub mod repositories;
pub mod schema;
