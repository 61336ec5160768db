//! Keel's own migrations, embedded in the library.
//!
//! The files of `migrations/<backend>/` are embedded with `include_str!` and made into a
//! sqlx [`Migrator`] here, with the versions, descriptions and checksums sqlx's `migrate!`
//! macro would give them (a test compares the two). The macro is the only sqlx macro Keel
//! itself would use, and it needs the whole of sqlx's macro crate (sqlx and its driver
//! compiled a second time, for the compiler): a service that uses no sqlx macro of its own
//! builds none.

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// One migration file: its name (`0001_keel.sql`) and its SQL.
pub(crate) type File = (&'static str, &'static str);

/// The files named, read from `migrations/<dir>/` at compile time.
#[cfg_attr(
    not(any(feature = "postgres", feature = "sqlite")),
    allow(unused_macros)
)]
macro_rules! embed {
    ($dir:literal: $($file:literal),+ $(,)?) => {
        &[$((
            $file,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $dir, "/", $file)),
        )),+]
    };
}
#[cfg_attr(
    not(any(feature = "postgres", feature = "sqlite")),
    allow(unused_imports)
)]
pub(crate) use embed;

/// A migrator for `files`, recording them in `table`.
pub(crate) fn migrator(files: &[File], table: &'static str) -> Migrator {
    let mut migrator = Migrator::with_migrations(files.iter().map(|&f| migration(f)).collect());
    migrator.dangerous_set_table_name(table);
    migrator
}

/// The version (before the first `_`) and the description (the rest, `_` read as spaces)
/// of a simple migration, as sqlx names them.
fn migration((name, sql): File) -> Migration {
    let (version, description) = name
        .strip_suffix(".sql")
        .and_then(|stem| stem.split_once('_'))
        .and_then(|(version, rest)| Some((version.parse().ok()?, rest.replace('_', " "))))
        .unwrap_or_else(|| {
            panic!("Keel's migration `{name}` is not named <version>_<description>.sql")
        });
    let no_tx = sql.starts_with("-- no-transaction");
    Migration::new(
        version,
        Cow::Owned(description),
        MigrationType::Simple,
        SqlStr::from_static(sql),
        no_tx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn postgres_embeds_every_file_as_sqlx_would() {
        assert_matches_directory(sqlx::Postgres::MIGRATIONS, "postgres").await;
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_embeds_every_file_as_sqlx_would() {
        assert_matches_directory(sqlx::Sqlite::MIGRATIONS, "sqlite").await;
    }

    /// The embedded files against the directory as sqlx's own resolver reads it: every file
    /// embedded, each with sqlx's version, description, checksum and transaction mode.
    async fn assert_matches_directory(files: &[File], dir: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dir);
        let resolved = Migrator::new(path)
            .await
            .expect("the migrations directory resolves");
        let embedded = migrator(files, "unused");
        let view = |m: &Migration| {
            (
                m.version,
                m.description.to_string(),
                m.migration_type,
                m.checksum.to_vec(),
                m.no_tx,
            )
        };
        assert_eq!(
            embedded.iter().map(view).collect::<Vec<_>>(),
            resolved.iter().map(view).collect::<Vec<_>>(),
            "migrations/{dir}/ and the files embedded differ: list every file in `embed!`"
        );
    }
}
