//! The optimistic-locking seed's bank account: balance 100, two concurrent debits of 50
//! and 80. Exactly one may succeed and the balance never goes negative; once with row
//! locks, once with versions and retries.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use keel::{Aggregate, Error, Locked, RetryPolicy, RowLock, UnitOfWorkOptions, Version, sqlx};
use tokio::sync::Barrier;

use super::support::{accounts_with, scalar};
use super::{B, Database, POSTGRES, Tx};

#[derive(Debug, thiserror::Error)]
#[error("insufficient funds: balance {balance}, debit {amount}")]
struct InsufficientFunds {
    balance: i64,
    amount: i64,
}
impl keel::Rejection for InsufficientFunds {}

struct Account {
    id: i64,
    balance: i64,
    version: Version,
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Id = i64;
    fn id(&self) -> &i64 {
        &self.id
    }
    fn version(&self) -> Version {
        self.version
    }
}

impl Account {
    fn debit(&mut self, amount: i64) -> Result<(), InsufficientFunds> {
        if self.balance < amount {
            return Err(InsufficientFunds {
                balance: self.balance,
                amount,
            });
        }
        self.balance -= amount;
        Ok(())
    }
}

async fn load(tx: &mut Tx<'_>, id: i64) -> Result<Account, Error> {
    let (balance, version): (i64, i64) =
        sqlx::query_as("SELECT balance, version FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_one(tx.conn())
            .await?;
    Ok(Account {
        id,
        balance,
        version: Version::new(version),
    })
}

async fn store_balance(tx: &mut Tx<'_>, account: &Account) -> Result<(), Error> {
    sqlx::query("UPDATE accounts SET balance = $1 WHERE id = $2")
        .bind(account.balance)
        .bind(account.id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// The window between read and write in which, without protection, both debits would
/// see 100.
const THINK: Duration = Duration::from_millis(60);

/// Each debit runs on a pool of its own, like requests served by separate instances.
async fn debit_with_row_lock(db: Database, amount: i64) -> Result<(), Error> {
    let mut db = db.connect_again().await?;
    db.unit_of_work_with(&UnitOfWorkOptions::named("debit_locked"), async |tx| {
        assert_eq!(
            tx.lock(RowLock::for_update("accounts", 1)).await?,
            Locked::Acquired
        );
        let mut account = load(tx, 1).await?;
        tokio::time::sleep(THINK).await;
        account.debit(amount)?;
        store_balance(tx, &account).await
    })
    .await
    .map(keel::Committed::into_value)
}

/// A debit that saves with an optimistic version check. With `both_read`, its first attempt
/// waits there after reading until the other debit has read too (PostgreSQL only: SQLite
/// takes its write lock at `BEGIN`, so the other could never read).
async fn debit_with_version(
    db: Database,
    amount: i64,
    attempts: &AtomicU32,
    both_read: Option<&Barrier>,
) -> Result<(), Error> {
    let mut db = db.connect_again().await?;
    let options = UnitOfWorkOptions::named("debit_optimistic")
        .retry(RetryPolicy::default().base_delay(Duration::from_millis(5)));
    let first = AtomicBool::new(true);
    let first = &first;
    db.unit_of_work_with(&options, async |tx| {
        attempts.fetch_add(1, Ordering::SeqCst);
        let mut account = load(tx, 1).await?;
        match both_read {
            Some(both_read) if first.swap(false, Ordering::SeqCst) => {
                tokio::time::timeout(Duration::from_secs(10), both_read.wait())
                    .await
                    .expect("the other debit never read");
            }
            _ => tokio::time::sleep(THINK).await,
        }
        account.debit(amount)?;
        account.version = tx.save_version("accounts", &account).await?;
        store_balance(tx, &account).await
    })
    .await
    .map(keel::Committed::into_value)
}

fn exactly_one_succeeded(results: [&Result<(), Error>; 2]) {
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "exactly one debit must succeed: {results:?}");
    for r in results {
        if let Err(e) = r {
            assert!(e.rejection::<InsufficientFunds>().is_some(), "{e}");
        }
    }
}

async fn concurrent_debits_with_row_locks(db: Database) {
    accounts_with(&db, 100).await;
    let (a, b) = tokio::join!(
        tokio::spawn(debit_with_row_lock(db.clone(), 50)),
        tokio::spawn(debit_with_row_lock(db.clone(), 80)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    exactly_one_succeeded([&a, &b]);
    let balance = scalar(&db, "SELECT balance FROM accounts WHERE id = 1").await;
    assert!(balance == 50 || balance == 20, "balance {balance}");
}

async fn concurrent_debits_with_versions_and_retry(db: Database) {
    accounts_with(&db, 100).await;
    let attempts = Box::leak(Box::new(AtomicU32::new(0)));
    let both_read = POSTGRES.then(|| &*Box::leak(Box::new(Barrier::new(2))));
    let (a, b) = tokio::join!(
        tokio::spawn(debit_with_version(db.clone(), 50, attempts, both_read)),
        tokio::spawn(debit_with_version(db.clone(), 80, attempts, both_read)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    exactly_one_succeeded([&a, &b]);
    let balance = scalar(&db, "SELECT balance FROM accounts WHERE id = 1").await;
    assert!(balance == 50 || balance == 20, "balance {balance}");
    assert_eq!(
        scalar(&db, "SELECT version FROM accounts WHERE id = 1").await,
        2,
        "one successful save moves the version once"
    );
    if POSTGRES {
        // Both read version 1 concurrently; the loser's save conflicted and re-ran.
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
    }
}

async fn a_stale_version_is_a_typed_conflict(mut db: Database) {
    accounts_with(&db, 100).await;
    let stale = Account {
        id: 1,
        balance: 100,
        version: Version::new(7),
    };
    let stale = &stale;
    let err = db
        .unit_of_work_with(
            &UnitOfWorkOptions::named("stale").retry(RetryPolicy::never()),
            async |tx| tx.save_version("accounts", stale).await,
        )
        .await
        .map(keel::Committed::into_value)
        .unwrap_err();
    match err.last_attempt() {
        Error::VersionConflict {
            aggregate,
            id,
            expected,
        } => {
            assert_eq!(
                (*aggregate, id.as_str(), *expected),
                ("Account", "1", Version::new(7))
            );
        }
        other => panic!("expected a version conflict, got {other}"),
    }
    assert!(matches!(err, Error::RetriesExhausted { attempts: 1, .. }));

    let missing = Account {
        id: 99,
        balance: 0,
        version: Version::INITIAL,
    };
    let missing = &missing;
    let err = db
        .unit_of_work(async |tx| tx.save_version("accounts", missing).await)
        .await
        .map(keel::Committed::into_value)
        .unwrap_err();
    assert!(
        matches!(err, Error::Database(sqlx::Error::RowNotFound)),
        "{err}"
    );
}

keel_testing::backend_tests!(
    concurrent_debits_with_row_locks,
    concurrent_debits_with_versions_and_retry,
    a_stale_version_is_a_typed_conflict,
);
