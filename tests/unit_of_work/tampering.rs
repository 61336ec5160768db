//! The transaction cannot be subverted: steps that end it by hand or swap its connection
//! get `Error::TransactionReplaced`; nothing more is committed, no event is released, and
//! the pool keeps working.

use keel::{DomainEvent, Error, sqlx};
use serde::{Deserialize, Serialize};

use super::support::{accounts_with, scalar};
use super::{B, Database};

#[derive(Debug, Serialize, Deserialize)]
struct Debited {
    account: i64,
}

impl DomainEvent for Debited {
    const NAME: &'static str = "test.debited.v1";
    const AGGREGATE_TYPE: &'static str = "Account";
    fn aggregate_id(&self) -> String {
        self.account.to_string()
    }
}

async fn events(db: &Database) -> i64 {
    scalar(db, "SELECT count(*) FROM keel_events").await
}

fn assert_replaced(err: &Error) {
    assert!(
        matches!(
            err,
            Error::TransactionReplaced {
                unit_of_work: "unit_of_work"
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("COMMIT") && text.contains("tx.conn()"),
        "{text}"
    );
}

/// A `COMMIT` run by hand: the unit of work does not commit anything after it, writes
/// no event, and says what happened.
async fn a_commit_by_hand_is_refused(mut db: Database) {
    accounts_with(&db, 100).await;
    let err = db
        .unit_of_work(async |tx| {
            sqlx::query("UPDATE accounts SET balance = 0 WHERE id = 1")
                .execute(tx.conn())
                .await?;
            sqlx::raw_sql("COMMIT").execute(tx.conn()).await?;
            sqlx::query("UPDATE accounts SET balance = 1 WHERE id = 2")
                .execute(tx.conn())
                .await?;
            tx.record(Debited { account: 1 })?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_replaced(&err);
    assert_eq!(events(&db).await, 0, "no event for a refused unit of work");
    // What ran after the hand `COMMIT` ran in autocommit and committed on its own: Keel
    // cannot undo it, but it refuses to go on as if the unit of work had committed.
    let after = scalar(&db, "SELECT balance FROM accounts WHERE id = 2").await;
    assert_eq!(after, 1);
    // The pool works on.
    db.unit_of_work(async |tx| {
        sqlx::query("UPDATE accounts SET balance = 7 WHERE id = 1")
            .execute(tx.conn())
            .await?;
        Ok(())
    })
    .await
    .unwrap()
    .into_value();
    assert_eq!(
        scalar(&db, "SELECT balance FROM accounts WHERE id = 1").await,
        7
    );
}

/// A `ROLLBACK` run by hand, then more writes and an event: refused, nothing written.
async fn a_rollback_by_hand_is_refused(mut db: Database) {
    accounts_with(&db, 100).await;
    let err = db
        .unit_of_work(async |tx| {
            sqlx::query("UPDATE accounts SET balance = 0 WHERE id = 1")
                .execute(tx.conn())
                .await?;
            sqlx::raw_sql("ROLLBACK").execute(tx.conn()).await?;
            tx.record(Debited { account: 1 })?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_replaced(&err);
    assert_eq!(events(&db).await, 0);
    assert_eq!(
        scalar(&db, "SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
}

/// `std::mem::replace(tx.conn(), another)`: the unit of work refuses to commit the other
/// connection; the stolen one's writes never commit.
async fn a_swapped_connection_is_refused(mut db: Database) {
    accounts_with(&db, 100).await;
    let other = db.connect_again().await.unwrap();
    let spare = std::sync::Mutex::new(Some(other.acquire().await.unwrap().detach()));
    let spare = &spare;
    let err = db
        .unit_of_work(async |tx| {
            sqlx::query("UPDATE accounts SET balance = 0 WHERE id = 1")
                .execute(tx.conn())
                .await?;
            let Some(another) = spare.lock().unwrap().take() else {
                return Err(Error::rejected(std::io::Error::other("ran twice")));
            };
            let stolen = std::mem::replace(tx.conn(), another);
            drop(stolen);
            tx.record(Debited { account: 1 })?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_replaced(&err);
    assert_eq!(events(&db).await, 0);
    assert_eq!(
        scalar(&db, "SELECT balance FROM accounts WHERE id = 1").await,
        100
    );
    other.close().await.unwrap();
}

keel_testing::backend_tests!(
    a_commit_by_hand_is_refused,
    a_rollback_by_hand_is_refused,
    a_swapped_connection_is_refused,
);
