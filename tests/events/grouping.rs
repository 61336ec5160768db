//! Group commit ([`GroupCommit`]): handlers' units of work running at the same time share
//! one transaction, and their effects still happen once per event, whichever member fails,
//! however it fails (an error after writing, a statement the database refuses, a timeout
//! mid-steps, a delivery another process finished meanwhile). Each scenario runs with
//! savepoints and optimistically (without the fallback to savepoints after a failure, which
//! a test of its own covers). Metrics are read from a recorder local to the test's single
//! thread, to see that groups really formed.

use std::collections::BTreeMap;
use std::time::Duration;

use keel::{DeliveryOptions, Error, GroupCommit, UnitOfWorkOptions, sqlx};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

use super::support::*;
use super::{App, B, Database, Handler, HandlerContext, Registry};

/// How a member misbehaves on its first attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Writes its effect, then returns an error.
    ErrorAfterWriting,
    /// Writes its effect, then runs a statement the database refuses (a duplicate key).
    RefusedStatement,
    /// Writes its effect, then outlives the handler timeout inside its steps.
    TimesOut,
    /// Its delivery is processed by another process first (one whose lease it took over):
    /// that process writes the effect and marks the delivery done, then this one runs.
    DoneElsewhere,
    /// Writes its effect, then ends the group's transaction with a `ROLLBACK` by hand and
    /// returns `Ok`: the members after it must not write outside the transaction.
    RolledBackByHand,
    /// Writes its effect, then commits the group's transaction by hand and returns `Ok`.
    CommittedByHand,
}

/// The other process of [`Fault::DoneElsewhere`]: a second pool on the test's database.
static ELSEWHERE: std::sync::Mutex<Option<Database>> = std::sync::Mutex::new(None);
/// Held by the test that uses [`ELSEWHERE`], as two tests of this module do.
static ELSEWHERE_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The effect of one delivery: one row per run that commits.
async fn write_effect(
    tx: &mut keel::Tx<'_, B>,
    order_id: i64,
    event_id: &str,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO effects (order_id, event_id) VALUES ($1, $2)")
        .bind(order_id)
        .bind(event_id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Every tenth order misbehaves on its first attempt, as `FAULT` says; the others write
/// their effect.
async fn handle(event: &OrderPlaced, ctx: &mut HandlerContext, fault: Fault) -> Result<(), Error> {
    let order_id = event.order_id;
    let faulty = order_id % 10 == 0 && ctx.attempt() == 1;
    let event_id = ctx.event_id().to_string();
    let event_id = &event_id;
    if faulty && fault == Fault::DoneElsewhere {
        let mut elsewhere = ELSEWHERE.lock().unwrap().clone().unwrap();
        let options =
            UnitOfWorkOptions::named("elsewhere").processing(ctx.event_id(), ctx.handler());
        elsewhere
            .unit_of_work_with(&options, async |tx| {
                write_effect(tx, order_id, event_id).await
            })
            .await?
            .into_value();
    }
    ctx.unit_of_work(async |tx| {
        write_effect(tx, order_id, event_id).await?;
        match fault {
            _ if !faulty => {}
            Fault::None | Fault::DoneElsewhere => {}
            Fault::ErrorAfterWriting => {
                return Err(Error::external(std::io::Error::other("partner said no")));
            }
            Fault::RefusedStatement => {
                sqlx::query("INSERT INTO orders (id) VALUES (0)")
                    .execute(tx.conn())
                    .await?;
            }
            Fault::TimesOut => tokio::time::sleep(Duration::from_secs(5)).await,
            Fault::RolledBackByHand => {
                sqlx::raw_sql("ROLLBACK").execute(tx.conn()).await?;
            }
            Fault::CommittedByHand => {
                sqlx::raw_sql("COMMIT").execute(tx.conn()).await?;
            }
        }
        Ok(())
    })
    .await
}

async fn schema_with_effects(db: &Database) {
    schema(db).await;
    db.execute_script(
        "CREATE TABLE effects (order_id BIGINT NOT NULL, event_id TEXT NOT NULL);
         INSERT INTO orders (id) VALUES (0);",
    )
    .await
    .unwrap();
}

async fn plain(e: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    handle(e, ctx, Fault::None).await
}
async fn errs(e: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    handle(e, ctx, Fault::ErrorAfterWriting).await
}
async fn refused(e: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    handle(e, ctx, Fault::RefusedStatement).await
}
async fn slow(e: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    handle(e, ctx, Fault::TimesOut).await
}
async fn raced(e: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    handle(e, ctx, Fault::DoneElsewhere).await
}
async fn rolls_back(e: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    handle(e, ctx, Fault::RolledBackByHand).await
}
async fn commits(e: &OrderPlaced, ctx: &mut HandlerContext) -> Result<(), Error> {
    handle(e, ctx, Fault::CommittedByHand).await
}

fn app(db: Database, grouping: GroupCommit, fault: Fault) -> App {
    let mut registry = Registry::new();
    let handler = match fault {
        Fault::None => Handler::new::<OrderPlaced, _>("effects", plain),
        Fault::ErrorAfterWriting => Handler::new::<OrderPlaced, _>("effects", errs),
        Fault::RefusedStatement => Handler::new::<OrderPlaced, _>("effects", refused),
        Fault::TimesOut => Handler::new::<OrderPlaced, _>("effects", slow),
        Fault::DoneElsewhere => Handler::new::<OrderPlaced, _>("effects", raced),
        Fault::RolledBackByHand => Handler::new::<OrderPlaced, _>("effects", rolls_back),
        Fault::CommittedByHand => Handler::new::<OrderPlaced, _>("effects", commits),
    };
    registry.register(handler.retry(quick_retry(3))).unwrap();
    App::builder(db, registry)
        .delivery(
            DeliveryOptions::default()
                .poll_interval(Duration::from_millis(20))
                .handler_timeout(Duration::from_millis(1_000))
                // Well past the timeouts: a failure recorded after the lease expired is
                // dropped (the delivery is another attempt's by then), and the timeout
                // scenarios count every failed first attempt.
                .lease(Duration::from_secs(10))
                .group_commit(Some(grouping.window(Duration::from_millis(20)))),
        )
        .start()
}

/// Places orders from producers running at once, one per list, each placing its list's
/// orders one after another.
async fn place(app: &App, producers: impl Iterator<Item = Vec<i64>>) {
    let producers: Vec<_> = producers
        .map(|orders| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut session = app.session();
                for order_id in orders {
                    session
                        .unit_of_work(async |tx| {
                            tx.record(OrderPlaced { order_id })?;
                            Ok(())
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
}

/// 200 orders from 20 producers at once; every effect once, groups of several members.
async fn scenario(db: Database, grouping: GroupCommit, fault: Fault) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    schema_with_effects(&db).await;
    let _turn = if fault == Fault::DoneElsewhere {
        let turn = ELSEWHERE_TURN.lock().await;
        *ELSEWHERE.lock().unwrap() = Some(db.connect_again().await.unwrap());
        Some(turn)
    } else {
        None
    };
    let app = app(db.clone(), grouping, fault);
    place(
        &app,
        (0..20_i64).map(|p| (1 + p * 10..=10 + p * 10).collect()),
    )
    .await;
    assert!(
        app.wait_until_delivered(Duration::from_secs(30))
            .await
            .unwrap(),
        "deliveries still pending after 30 s ({grouping:?}, {fault:?})"
    );
    let effects = count(&db, "SELECT COUNT(*) FROM effects").await;
    let distinct = count(&db, "SELECT COUNT(DISTINCT order_id) FROM effects").await;
    assert_eq!(
        (effects, distinct),
        (200, 200),
        "each order's effect exactly once ({grouping:?}, {fault:?})"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM keel_done").await, 200);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM keel_deliveries WHERE status = 'dead'"
        )
        .await,
        0
    );
    let failed = failures(&db, "effects").await;
    match fault {
        // The member that found its delivery done undid its group, and returned
        // `AlreadyProcessed` when it ran again alone: no failed attempt.
        Fault::None | Fault::DoneElsewhere => assert_eq!(failed, 0),
        // No slow member can finish at its first attempt, and members queued behind one
        // wait for the group's connection: some time out too, and run again. (Counted from
        // the done log's attempts: a failure is not recorded once its lease has expired,
        // which a loaded machine with a pool of one connection reaches.)
        // The members after it may fail to begin in the ended transaction, and run again.
        // Refused, the faulty member runs again alone, where its hand-made end is refused
        // too, after its own transaction committed or not: how many failures are recorded
        // depends on which.
        Fault::RolledBackByHand | Fault::CommittedByHand => {}
        Fault::TimesOut => {
            let retried = count(&db, "SELECT COUNT(*) FROM keel_done WHERE attempts > 1").await;
            assert!(retried >= 20, "{retried} deliveries ran more than once");
        }
        _ => assert_eq!(failed, 20, "only the failing members' attempts count"),
    }
    app.shutdown().await.unwrap();

    let metrics: BTreeMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect();
    let Some(DebugValue::Histogram(sizes)) = metrics.get("keel_group_commit_members") else {
        panic!("no group committed: {metrics:#?}");
    };
    let largest = sizes.iter().map(|s| s.into_inner()).fold(0.0, f64::max);
    assert!(
        largest > 1.0,
        "groups never had more than one member: {sizes:?}"
    );
    // SQLite marks every member with a savepoint: a failing one is always undone alone.
    let undoes = matches!(fault, Fault::TimesOut | Fault::DoneElsewhere)
        || (fault != Fault::None && !grouping.uses_savepoints() && super::POSTGRES);
    if undoes {
        assert!(
            matches!(metrics.get("keel_group_commits_undone_total"), Some(DebugValue::Counter(n)) if *n > 0),
            "a failing member undid no group ({grouping:?}, {fault:?}): {metrics:#?}"
        );
    }
}

/// After a member fails, optimistic groups run their members in savepoints for a while:
/// in 20 waves of 10 orders, 50 ms apart, one order of each wave fails its first attempt;
/// the first failing member undoes its group, and the later ones are undone alone, where
/// each would undo its group without savepoints. (A wave's orders arrive after a quiet
/// moment, so its groups take whoever arrives while their members run.)
#[tokio::test(flavor = "current_thread")]
async fn optimistic_groups_take_savepoints_after_a_member_fails() {
    if !super::POSTGRES {
        // SQLite marks every member with a savepoint: a failing one is always undone alone.
        return;
    }
    let Some(test) = keel_testing::TestDatabase::<super::B>::new().await else {
        return;
    };
    let db = test.database().clone();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    schema_with_effects(&db).await;
    let app = app(
        db.clone(),
        GroupCommit::optimistic(),
        Fault::ErrorAfterWriting,
    );
    for wave in 0..20_i64 {
        place(&app, (1..=10).map(|i| vec![wave * 10 + i])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        app.wait_until_delivered(Duration::from_secs(30))
            .await
            .unwrap()
    );
    let effects = count(&db, "SELECT COUNT(*) FROM effects").await;
    let distinct = count(&db, "SELECT COUNT(DISTINCT order_id) FROM effects").await;
    assert_eq!((effects, distinct), (200, 200), "each order's effect once");
    assert_eq!(failures(&db, "effects").await, 20);
    app.shutdown().await.unwrap();
    let undone = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) if key.key().name() == "keel_group_commits_undone_total" => {
                Some(n)
            }
            _ => None,
        })
        .unwrap_or(0);
    assert!(
        (1..=3).contains(&undone),
        "{undone} groups undone by 20 failing members in 20 waves: optimistic groups \
         should run in savepoints after a failure"
    );
}

/// Optimistic groups that never fall back to savepoints: the scenarios' 200 orders take less
/// than the default second, which would otherwise run most of them in savepoints after the
/// first failure.
fn optimistic_only() -> GroupCommit {
    GroupCommit::optimistic().savepoints_after_failure(Duration::ZERO)
}

macro_rules! grouping_tests {
    ($($(#[$attr:meta])* $name:ident: $grouping:expr, $fault:expr;)+) => {$(
        $(#[$attr])*
        #[tokio::test(flavor = "current_thread")]
        async fn $name() {
            if let Some(test) = keel_testing::TestDatabase::<super::B>::new().await {
                scenario(test.database().clone(), $grouping, $fault).await;
            }
        }
    )+};
}

grouping_tests! {
    savepoints_group_members: GroupCommit::savepoints(), Fault::None;
    optimistic_groups_members: optimistic_only(), Fault::None;
    savepoints_undo_a_member_that_errs_alone: GroupCommit::savepoints(), Fault::ErrorAfterWriting;
    optimistic_reruns_the_others_when_a_member_errs: optimistic_only(), Fault::ErrorAfterWriting;
    savepoints_survive_a_refused_statement: GroupCommit::savepoints(), Fault::RefusedStatement;
    optimistic_survives_a_refused_statement: optimistic_only(), Fault::RefusedStatement;
    savepoints_survive_a_member_timing_out: GroupCommit::savepoints(), Fault::TimesOut;
    optimistic_survives_a_member_timing_out: optimistic_only(), Fault::TimesOut;
    savepoints_undo_a_group_whose_member_was_done_elsewhere: GroupCommit::savepoints(), Fault::DoneElsewhere;
    optimistic_undoes_a_group_whose_member_was_done_elsewhere: optimistic_only(), Fault::DoneElsewhere;
    savepoints_refuse_a_member_that_rolls_back_by_hand: GroupCommit::savepoints(), Fault::RolledBackByHand;
    optimistic_refuses_a_member_that_rolls_back_by_hand: optimistic_only(), Fault::RolledBackByHand;
    savepoints_refuse_a_member_that_commits_by_hand: GroupCommit::savepoints(), Fault::CommittedByHand;
    optimistic_refuses_a_member_that_commits_by_hand: optimistic_only(), Fault::CommittedByHand;
}

/// A grouped unit of work that does nothing but commit.
async fn commit_grouped(mut db: Database, grouping: GroupCommit) -> Duration {
    let started = std::time::Instant::now();
    let options = UnitOfWorkOptions::named("grouped").grouped(grouping);
    db.unit_of_work_with(&options, async |tx| {
        sqlx::query("SELECT 1").execute(tx.conn()).await?;
        Ok(())
    })
    .await
    .unwrap()
    .into_value();
    started.elapsed()
}

/// The sizes of the groups committed since the last call, from a recorder local to the
/// test's thread.
fn group_sizes(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| match value {
            DebugValue::Histogram(sizes) if key.key().name() == "keel_group_commit_members" => {
                Some(sizes.into_iter().map(|s| s.into_inner()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// A group opened after a quiet moment begins at once, whatever its window, and so does one
/// opened right after a group of one: a caller running units of work one after another
/// gains nothing by waiting.
#[tokio::test(flavor = "current_thread")]
async fn units_of_work_one_after_another_do_not_wait_out_their_window() {
    let Some(test) = keel_testing::TestDatabase::<super::B>::new().await else {
        return;
    };
    let grouping = GroupCommit::optimistic().window(Duration::from_secs(20));
    for n in 1..=3 {
        let took = commit_grouped(test.database().clone(), grouping).await;
        assert!(
            took < Duration::from_secs(10),
            "grouped unit of work {n} of 3, one after another, took {took:?}: it waited for \
             its window"
        );
    }
}

/// A group opened right after one that gathered several members waits for more before it
/// begins, and a member with a shorter window (as the dispatcher gives deliveries with an
/// ordering key) makes it begin sooner.
#[tokio::test(flavor = "current_thread")]
async fn a_group_opened_under_load_waits_for_members_and_an_impatient_one_starts_it() {
    let Some(test) = keel_testing::TestDatabase::<super::B>::new().await else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let db = test.database().clone();
    let patient = GroupCommit::optimistic().window(Duration::from_secs(20));
    // Two at once: the first group begins at once (nothing ran before it), and the second
    // joins it while its `BEGIN` runs.
    let (first, second) = tokio::join!(
        commit_grouped(db.clone(), patient),
        commit_grouped(db.clone(), patient)
    );
    assert!(first < Duration::from_secs(10) && second < Duration::from_secs(10));
    assert_eq!(group_sizes(&snapshotter), [2.0]);
    // The next group follows a group of two closely: it waits for members.
    let waiting = tokio::spawn(commit_grouped(db.clone(), patient));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the next group did not wait");
    let impatient = commit_grouped(db.clone(), patient.window(Duration::ZERO)).await;
    let waited = waiting.await.unwrap();
    assert!(
        waited < Duration::from_secs(10) && impatient < Duration::from_secs(10),
        "a member with no window joined, and the group still waited ({waited:?}, {impatient:?})"
    );
    assert_eq!(
        group_sizes(&snapshotter),
        [2.0],
        "the member with no window joined the waiting group"
    );
}

/// A group whose members hold every delivery slot begins at once: no other delivery can
/// join it. Twelve events recorded together, two slots, a 3 s window: were each group after
/// the first to wait out its window, the twelve would take 15 s.
#[tokio::test(flavor = "current_thread")]
async fn a_group_holding_every_delivery_slot_does_not_wait() {
    let Some(test) = keel_testing::TestDatabase::<super::B>::new().await else {
        return;
    };
    let db = test.database().clone();
    schema_with_effects(&db).await;
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("effects", plain))
        .unwrap();
    let grouping = GroupCommit::optimistic().window(Duration::from_secs(3));
    let app = App::builder(db.clone(), registry)
        .delivery(
            DeliveryOptions::default()
                .max_in_flight(2)
                .group_commit(Some(grouping)),
        )
        .start();
    let started = std::time::Instant::now();
    app.session()
        .unit_of_work(async |tx| {
            for order_id in 1..=12 {
                tx.record(OrderPlaced { order_id })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    assert!(
        app.wait_until_delivered(Duration::from_secs(60))
            .await
            .unwrap()
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "12 deliveries on 2 slots took {took:?}: groups holding every slot waited for members"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM effects").await, 12);
    app.shutdown().await.unwrap();
}
