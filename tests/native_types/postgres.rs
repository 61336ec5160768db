//! PostgreSQL: `uuid`, `timestamptz`, `jsonb`, `text[]`, an enum, `FromRow`, `query!`,
//! `query_as!`, `query_scalar!`, `query_file!` and repositories, all on `tx.conn()`.
//!
//! The `query!` family is checked against a database at build time; the build uses the
//! query data checked in under `.sqlx/` (`SQLX_OFFLINE=true`), so no server is needed to
//! compile. After changing a query or `SCHEMA`, refresh it (see `docs/testing.md`).

use keel::postgres::{Database, Tx};
use keel::{Error, RowLock};
use keel_testing::TestDatabase;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{Executor, FromRow, PgConnection, Postgres, Row};
use time::OffsetDateTime;
use uuid::Uuid;

type B = Postgres;

/// The schema the `query!` data in `.sqlx/` was prepared against.
pub const SCHEMA: &str = include_str!("schema_postgres.sql");

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "grade", rename_all = "lowercase")]
enum Grade {
    Bronze,
    Gold,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Details {
    reason: String,
    level: u8,
}

#[derive(Debug, Clone, PartialEq, FromRow)]
struct Badge {
    id: Uuid,
    name: String,
    grade: Grade,
    awarded_at: OffsetDateTime,
    details: Json<Details>,
    tags: Vec<String>,
    points: i32,
}

fn badge(name: &str) -> Badge {
    Badge {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        grade: Grade::Gold,
        // Microseconds: PostgreSQL's precision.
        awarded_at: OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap(),
        details: Json(Details {
            reason: "first assessment".to_owned(),
            level: 3,
        }),
        tags: vec!["pix".to_owned(), "certif".to_owned()],
        points: 42,
    }
}

/// A repository as a sqlx team already has it: a function on `&mut PgConnection`.
async fn save(conn: &mut PgConnection, badge: &Badge) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO badges (id, name, grade, awarded_at, details, tags, points)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(badge.id)
    .bind(&badge.name)
    .bind(badge.grade)
    .bind(badge.awarded_at)
    .bind(&badge.details)
    .bind(&badge.tags)
    .bind(badge.points)
    .execute(conn)
    .await?;
    Ok(())
}

/// A repository generic over any PostgreSQL executor (pool, connection, transaction).
async fn count_gold<'e, E: Executor<'e, Database = Postgres>>(executor: E) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM badges WHERE grade = 'gold'")
        .fetch_one(executor)
        .await
}

async fn with_schema() -> Option<(TestDatabase<B>, Database)> {
    let test_db = TestDatabase::<B>::new().await?;
    let db = test_db.database().clone();
    db.execute_script(SCHEMA).await.unwrap();
    Some((test_db, db))
}

#[tokio::test]
async fn native_types_and_from_row_inside_a_unit_of_work() {
    let Some((_guard, mut db)) = with_schema().await else {
        return;
    };
    let written = badge("explorer");
    let read = db
        .unit_of_work(async |tx: &mut Tx<'_>| {
            save(tx.conn(), &written).await?;
            let read: Badge = sqlx::query_as("SELECT * FROM badges WHERE id = $1")
                .bind(written.id)
                .fetch_one(tx.conn())
                .await?;
            Ok(read)
        })
        .await
        .unwrap()
        .into_value();
    assert_eq!(read, written);
}

#[tokio::test]
async fn repositories_take_the_transaction_as_connection_or_executor() {
    let Some((_guard, mut db)) = with_schema().await else {
        return;
    };
    let (first, second) = (badge("first"), badge("second"));
    let counted = db
        .unit_of_work(async |tx| {
            save(tx.conn(), &first).await?;
            save(&mut *tx.conn(), &second).await?;
            Ok(count_gold(tx.conn()).await?)
        })
        .await
        .unwrap()
        .into_value();
    assert_eq!(counted, 2);

    // Rolled back with the unit of work: the repositories wrote in its transaction.
    let third = badge("third");
    let err = db
        .unit_of_work(async |tx| {
            save(tx.conn(), &third).await?;
            Err::<(), _>(Error::rejected(std::io::Error::other("refused")))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Rejected(_)));
    let mut conn = db.acquire().await.unwrap();
    assert_eq!(count_gold(&mut *conn).await.unwrap(), 2);
}

#[tokio::test]
async fn select_star_on_a_table_with_a_uuid_column() {
    let Some((_guard, mut db)) = with_schema().await else {
        return;
    };
    let written = badge("star");
    let points: i32 = db
        .unit_of_work(async |tx| {
            save(tx.conn(), &written).await?;
            let row = sqlx::query("SELECT * FROM badges")
                .fetch_one(tx.conn())
                .await?;
            Ok(row.try_get("points")?)
        })
        .await
        .unwrap()
        .into_value();
    assert_eq!(points, 42);
}

#[tokio::test]
async fn checked_query_macros_from_the_offline_data() {
    let Some((_guard, mut db)) = with_schema().await else {
        return;
    };
    let written = badge("checked");
    let (name, gold, tags, from_file) = db
        .unit_of_work(async |tx| {
            let _ = tx.lock(RowLock::for_update("badges", written.id)).await?;
            sqlx::query!(
                "INSERT INTO badges (id, name, grade, awarded_at, details, tags, points)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                written.id,
                written.name,
                written.grade as Grade,
                written.awarded_at,
                serde_json::to_value(&written.details.0).map_err(Error::rejected)?,
                &written.tags,
                written.points,
            )
            .execute(tx.conn())
            .await?;
            let row = sqlx::query!(
                r#"SELECT name, grade AS "grade: Grade", tags FROM badges WHERE id = $1"#,
                written.id
            )
            .fetch_one(tx.conn())
            .await?;
            let gold = sqlx::query_scalar!(
                r#"SELECT count(*) AS "count!" FROM badges WHERE grade = 'gold'"#
            )
            .fetch_one(tx.conn())
            .await?;
            let from_file = sqlx::query_file_as!(Named, "tests/native_types/badge_names.sql")
                .fetch_all(tx.conn())
                .await?;
            assert_eq!(row.grade, Grade::Gold);
            Ok((row.name, gold, row.tags, from_file))
        })
        .await
        .unwrap()
        .into_value();
    assert_eq!((name.as_str(), gold), ("checked", 1));
    assert_eq!(tags, written.tags);
    assert_eq!(
        from_file,
        vec![Named {
            name: "checked".to_owned()
        }]
    );

    let typed = db
        .unit_of_work(async |tx| {
            Ok(sqlx::query_as!(
                Badge,
                r#"SELECT id, name, grade AS "grade: Grade", awarded_at,
                          details AS "details: Json<Details>", tags, points
                   FROM badges"#
            )
            .fetch_one(tx.conn())
            .await?)
        })
        .await
        .unwrap()
        .into_value();
    assert_eq!(typed, written);
}

#[derive(Debug, PartialEq)]
struct Named {
    name: String,
}
