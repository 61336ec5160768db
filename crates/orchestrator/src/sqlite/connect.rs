//! Opening a SQLite database: its URL, the pool, and each connection's settings.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnection, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Executor};

use crate::database::{invalid, not_connected};
use crate::{DatabaseOptions, Error};

/// The pool of `url`: WAL, the busy timeout of `options`, foreign keys, and the temporary
/// table of the group guard on every connection.
pub(super) async fn open(url: &str, options: &DatabaseOptions) -> Result<sqlx::SqlitePool, Error> {
    // A guard that makes a `COMMIT` run by hand inside a group commit fail: a group's
    // transaction holds a row whose missing reference SQLite checks at `COMMIT` (and
    // keeps the transaction open when the check fails); the group's own commit deletes
    // it. See `transaction::begin`. A temporary table: the row never reaches the database
    // file.
    const GROUP_GUARD: &str = "CREATE TEMP TABLE IF NOT EXISTS keel_group_guard (\
         marker TEXT PRIMARY KEY, \
         missing TEXT NOT NULL REFERENCES keel_group_guard (marker) \
         DEFERRABLE INITIALLY DEFERRED) WITHOUT ROWID;";
    let busy_ms = options.lock_timeout.as_millis();
    crate::pool::tested_unless_beginning(SqlitePoolOptions::new())
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                let pragmas = format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {busy_ms}; {GROUP_GUARD}"
                );
                conn.execute(AssertSqlSafe(pragmas)).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|source| not_connected(url, source))
}

pub(super) async fn set_busy_timeout(
    conn: &mut SqliteConnection,
    busy: Duration,
) -> Result<(), Error> {
    let pragma = format!("PRAGMA busy_timeout = {}", busy.as_millis());
    sqlx::query(AssertSqlSafe(pragma)).execute(conn).await?;
    Ok(())
}

/// Normalises a SQLite URL: refuses in-memory databases, creates the file's directory,
/// and asks for the file to be created if missing.
pub(super) fn sqlite_url(url: &str) -> Result<String, Error> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(match url.split_once(':') {
            Some((scheme, _)) if !scheme.is_empty() => invalid(
                url,
                &format!("this database is SQLite, but the URL's scheme is `{scheme}`"),
            ),
            _ => invalid(url, "the URL has no scheme"),
        });
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(url, "the SQLite URL names no file"));
    }
    if path == ":memory:" || query.is_some_and(|q| q.contains("mode=memory")) {
        return Err(invalid(
            url,
            "in-memory SQLite databases are not supported (each pooled connection would see \
             its own empty database); use a file, e.g. `sqlite:data/app.db`",
        ));
    }
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            invalid(
                url,
                &format!("cannot create directory `{}`: {e}", dir.display()),
            )
        })?;
    }
    Ok(match query {
        Some(q) if q.contains("mode=") => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_the_file_and_refuse_memory() {
        let dir = std::env::temp_dir().join(format!("keel-url-{}", std::process::id()));
        let file = dir.join("sub/app.db");
        let url = sqlite_url(&format!("sqlite:{}", file.display())).unwrap();
        assert!(url.ends_with("app.db?mode=rwc"), "{url}");
        assert!(file.parent().unwrap().is_dir());
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(sqlite_url("sqlite::memory:").is_err());
        assert!(sqlite_url("sqlite:").is_err());
        assert_eq!(
            sqlite_url("sqlite:a.db?mode=ro").unwrap(),
            "sqlite://a.db?mode=ro"
        );
        let err = sqlite_url("postgres://u:pw@h/db").unwrap_err().to_string();
        assert!(
            err.contains("scheme is `postgres`") && !err.contains("pw"),
            "{err}"
        );
    }
}
