//! Routing does not depend on which binary wrote an event: services sharing one database
//! each get their own deliveries, during a rolling deploy v1 and v2 processes run side by
//! side without losing, or dead-lettering, what only one of them handles, and a new handler
//! gets earlier events when backfilled.

use std::time::Duration;

use keel::Error;

use super::support::*;
use super::{App, B, Database, Handler, Session};

const EVENTS: i64 = 40;

async fn tick(session: &mut Session<'_>, seq: i64) -> Result<(), Error> {
    session
        .unit_of_work(async |tx| {
            tx.record(Ticked { seq })?;
            Ok(())
        })
        .await
}

/// Waits until `n` subscriptions are recorded (each relay records its own as it starts).
async fn until_subscribed(db: &Database, n: i64) {
    for _ in 0..400 {
        if scalar(db, "SELECT COUNT(*) FROM keel_subscriptions").await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the relays did not record their subscriptions");
}

async fn settle(apps: &[&App]) {
    for app in apps {
        assert!(
            app.wait_until_delivered(Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert_eq!(app.dead_letters().count().await.unwrap(), 0);
    }
}

/// Billing handles `effect_a`, shipping `effect_b`; each writes half the events. Every
/// event reaches both handlers once; neither service takes, or dead-letters, the other's.
async fn two_services_share_one_database(db: Database) {
    schema(&db).await;
    let billing = app(
        &db.connect_again().await.unwrap(),
        registry(vec![Handler::new::<Ticked, _>("effect_a", effect_a)]),
    );
    let shipping = app(
        &db.connect_again().await.unwrap(),
        registry(vec![Handler::new::<Ticked, _>("effect_b", effect_b)]),
    );
    until_subscribed(&db, 2).await;
    for seq in 0..EVENTS {
        let service = if seq % 2 == 0 { &billing } else { &shipping };
        tick(&mut service.session(), seq).await.unwrap();
    }
    settle(&[&billing, &shipping]).await;
    exactly_once(&db, EVENTS, 2).await;
    billing.shutdown().await.unwrap();
    shipping.shutdown().await.unwrap();
}

/// v2 adds handler `effect_b`. While v1 and v2 run side by side, v1 writes events too: the
/// deliveries of `effect_b` exist for them, v2 runs them, and v1 never claims them.
async fn a_rolling_deploy_adds_a_handler(db: Database) {
    schema(&db).await;
    let v1 = app(
        &db.connect_again().await.unwrap(),
        registry(vec![Handler::new::<Ticked, _>("effect_a", effect_a)]),
    );
    until_subscribed(&db, 1).await;
    let v2 = app(
        &db.connect_again().await.unwrap(),
        registry(vec![
            Handler::new::<Ticked, _>("effect_a", effect_a),
            Handler::new::<Ticked, _>("effect_b", effect_b),
        ]),
    );
    until_subscribed(&db, 2).await;
    for seq in 0..EVENTS {
        let process = if seq < EVENTS / 2 { &v1 } else { &v2 };
        tick(&mut process.session(), seq).await.unwrap();
    }
    settle(&[&v1, &v2]).await;
    // The deploy ends: v1 stops.
    v1.shutdown().await.unwrap();
    exactly_once(&db, EVENTS, 2).await;
    v2.shutdown().await.unwrap();
}

/// A handler deployed after events were written receives the later ones; the earlier ones
/// only when backfilled, once.
async fn a_new_handler_is_backfilled_on_demand(db: Database) {
    schema(&db).await;
    let since = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let v1 = app(
        &db.connect_again().await.unwrap(),
        registry(vec![Handler::new::<Ticked, _>("effect_a", effect_a)]),
    );
    for seq in 0..10 {
        tick(&mut v1.session(), seq).await.unwrap();
    }
    settle(&[&v1]).await;
    v1.shutdown().await.unwrap();

    let v2 = app(
        &db.connect_again().await.unwrap(),
        registry(vec![
            Handler::new::<Ticked, _>("effect_a", effect_a),
            Handler::new::<Ticked, _>("effect_b", effect_b),
        ]),
    );
    for seq in 10..20 {
        tick(&mut v2.session(), seq).await.unwrap();
    }
    settle(&[&v2]).await;
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM effects WHERE handler = 'effect_b'"
        )
        .await,
        10,
        "only the events written since effect_b exists"
    );
    let backfilled = v2.dispatcher().backfill("effect_b", since).await.unwrap();
    assert_eq!(backfilled, 10);
    settle(&[&v2]).await;
    assert_eq!(
        v2.dispatcher().backfill("effect_b", since).await.unwrap(),
        0
    );
    exactly_once(&db, 20, 2).await;
    assert!(v2.dispatcher().backfill("nobody", since).await.is_err());
    v2.shutdown().await.unwrap();
}

/// While the shipping service is down, billing's events wait for it; billing's own
/// deliveries are done, and billing's wait says so.
async fn a_service_waits_only_for_its_own_deliveries(db: Database) {
    schema(&db).await;
    let shipping = app(
        &db.connect_again().await.unwrap(),
        registry(vec![Handler::new::<Ticked, _>("effect_b", effect_b)]),
    );
    until_subscribed(&db, 1).await;
    shipping.shutdown().await.unwrap();
    let billing = app(
        &db.connect_again().await.unwrap(),
        registry(vec![Handler::new::<Ticked, _>("effect_a", effect_a)]),
    );
    for seq in 0..5 {
        tick(&mut billing.session(), seq).await.unwrap();
    }
    assert!(
        billing
            .wait_until_delivered(Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_deliveries WHERE handler = 'effect_b' AND status = 'pending'"
        )
        .await,
        5,
        "shipping's deliveries wait for it"
    );
    billing.shutdown().await.unwrap();
}

keel_testing::backend_tests!(
    a_service_waits_only_for_its_own_deliveries,
    two_services_share_one_database,
    a_rolling_deploy_adds_a_handler,
    a_new_handler_is_backfilled_on_demand
);
