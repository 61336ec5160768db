//! Infrastructure: the schema and repositories. Repositories take `&mut Tx`, so they can
//! only run inside a unit of work, on its connection.

pub mod repositories;
pub mod schema;
