//! What a sqlx team writes every day works inside a unit of work, on the driver's own
//! connection: native types, `FromRow`, repositories taking `&mut PgConnection` or any
//! executor, and (on PostgreSQL) the checked `query!` macros built from the offline query
//! data in `.sqlx/`.

mod postgres;
mod sqlite;
