//! Connections are tested before use, except by a unit of work, whose `BEGIN` tests it.
//!
//! sqlx tests an idle connection with a round trip before handing it out
//! (`test_before_acquire`), so that a connection the server dropped (a restart, an
//! operator's terminate) is replaced rather than failing its first statement. A unit of
//! work's first statement is its `BEGIN`, which changes nothing when it fails: that round
//! trip is a test of its own. So a unit of work takes its connection untested, and when its
//! `BEGIN` finds the connection lost, it closes it and begins again at once on a tested
//! one, without counting an attempt (see `Database::begun`). Every other acquire (a single
//! statement sent alone, the relay's claims and marks, the application's own
//! [`Database::acquire`](crate::Database::acquire) and `pool()`) is tested as sqlx does by
//! default: a statement that may have taken effect must not be the one that finds out.
//!
//! On PostgreSQL this spares one round trip of the four or five a short unit of work makes.

use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::{Connection, Database};

tokio::task_local! {
    /// Set while a unit of work acquires the connection its `BEGIN` will test.
    static UNTESTED: ();
}

/// `options` testing each connection before it is handed out, unless a unit of work
/// acquires it with [`acquire_untested`].
pub(crate) fn tested_unless_beginning<DB: Database>(options: PoolOptions<DB>) -> PoolOptions<DB> {
    options
        .test_before_acquire(false)
        .before_acquire(|conn, _meta| {
            Box::pin(async move {
                if UNTESTED.try_with(|_| ()).is_err() {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A connection for a unit of work whose `BEGIN` comes next and tests it.
pub(crate) async fn acquire_untested<DB: Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<PoolConnection<DB>, sqlx::Error> {
    UNTESTED.scope((), pool.acquire()).await
}
