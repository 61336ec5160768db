//! SQLite: the equivalents its driver supports (`Uuid`, `OffsetDateTime`, `Json<T>`, an
//! enum stored as text), `FromRow`, and repositories on `&mut SqliteConnection` or any
//! executor, all on `tx.conn()`.

use keel::Error;
use keel::sqlite::{Database, Tx};
use keel_testing::TestDatabase;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{Executor, FromRow, Row, Sqlite, SqliteConnection};
use time::OffsetDateTime;
use uuid::Uuid;

type B = Sqlite;

const SCHEMA: &str = "CREATE TABLE badges (
    id         BLOB PRIMARY KEY,
    name       TEXT NOT NULL,
    grade      TEXT NOT NULL CHECK (grade IN ('bronze', 'silver', 'gold')),
    awarded_at TEXT NOT NULL,
    details    TEXT NOT NULL,
    points     INTEGER NOT NULL
)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(rename_all = "lowercase")]
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
    points: i32,
}

fn badge(name: &str) -> Badge {
    Badge {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        grade: Grade::Gold,
        awarded_at: OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap(),
        details: Json(Details {
            reason: "first assessment".to_owned(),
            level: 3,
        }),
        points: 42,
    }
}

async fn save(conn: &mut SqliteConnection, badge: &Badge) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO badges (id, name, grade, awarded_at, details, points)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(badge.id)
    .bind(&badge.name)
    .bind(badge.grade)
    .bind(badge.awarded_at)
    .bind(&badge.details)
    .bind(badge.points)
    .execute(conn)
    .await?;
    Ok(())
}

async fn count_gold<'e, E: Executor<'e, Database = Sqlite>>(executor: E) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM badges WHERE grade = 'gold'")
        .fetch_one(executor)
        .await
}

async fn with_schema() -> (TestDatabase<B>, Database) {
    let test_db = TestDatabase::<B>::new().await.unwrap();
    let db = test_db.database().clone();
    db.execute_script(SCHEMA).await.unwrap();
    (test_db, db)
}

#[tokio::test]
async fn native_types_and_from_row_inside_a_unit_of_work() {
    let (_guard, mut db) = with_schema().await;
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
    let (_guard, mut db) = with_schema().await;
    let (first, second) = (badge("first"), badge("second"));
    let counted = db
        .unit_of_work(async |tx| {
            save(tx.conn(), &first).await?;
            save(tx.conn(), &second).await?;
            Ok(count_gold(tx.conn()).await?)
        })
        .await
        .unwrap()
        .into_value();
    assert_eq!(counted, 2);

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
    let (_guard, mut db) = with_schema().await;
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
