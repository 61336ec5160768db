//! Bad input: an event no handler knows and a payload that no longer deserializes go to
//! the dead letter with reasons; the other events keep flowing.

use std::time::Duration;

use keel::{DeliveryOptions, DomainEvent, NO_HANDLER, RetryPolicy};
use serde::{Deserialize, Serialize};

use super::support::*;
use super::{B, Database, Dispatcher, Handler, POSTGRES};

/// Written by some other program: nobody here handles it.
#[derive(Serialize, Deserialize)]
struct Unknown {
    x: i64,
}

impl DomainEvent for Unknown {
    const NAME: &'static str = "test.nobody_handles_this.v1";
    const AGGREGATE_TYPE: &'static str = "Nothing";
    fn aggregate_id(&self) -> String {
        self.x.to_string()
    }
}

/// An older shape of `Ticked`, under the same name: its payload lacks `seq`.
#[derive(Serialize, Deserialize)]
struct OldTicked {
    tick: i64,
}

impl DomainEvent for OldTicked {
    const NAME: &'static str = "test.ticked.v1";
    const AGGREGATE_TYPE: &'static str = "Clock";
    fn aggregate_id(&self) -> String {
        self.tick.to_string()
    }
}

async fn poison_goes_to_the_dead_letter_and_the_rest_flows(db: Database) {
    schema(&db).await;
    // A producer without routing, like another program writing to the same outbox.
    let mut other_program = db.clone();
    other_program
        .unit_of_work(async |tx| {
            tx.record(Ticked { seq: 1 })?;
            tx.record(Unknown { x: 7 })?;
            tx.record(OldTicked { tick: 3 })?;
            tx.record(Ticked { seq: 2 })?;
            Ok(())
        })
        .await
        .unwrap()
        .into_value();
    let app = app(&db, both_effects());
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );

    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM effects").await,
        4,
        "good events done"
    );
    let dead = app.dead_letters().list(10).await.unwrap();
    assert_eq!(dead.len(), 3, "{dead:#?}");

    let unknown = dead.iter().find(|d| d.handler == NO_HANDLER).unwrap();
    assert_eq!(unknown.event_name, "test.nobody_handles_this.v1");
    let reason = &unknown.failures[0].error;
    assert!(
        reason.contains("no handler is registered for event `test.nobody_handles_this.v1`"),
        "{reason}"
    );

    for handler in ["effect_a", "effect_b"] {
        let old = dead.iter().find(|d| d.handler == handler).unwrap();
        assert_eq!(
            old.attempts, 1,
            "a payload that does not deserialize is not retried"
        );
        let reason = &old.failures[0].error;
        assert!(
            reason.contains("test.ticked.v1") && reason.contains("seq"),
            "{reason}"
        );
        assert!(old.payload.contains("tick"));
    }
    app.shutdown().await.unwrap();

    // A handler for the unknown event is deployed, and its entry retried: it is routed
    // again, delivered, and leaves no error row behind (a new process: the old one's
    // shutdown closed its pool).
    let db = db.connect_again().await.unwrap();
    let app = super::support::app(
        &db,
        registry(vec![
            Handler::new::<Ticked, _>("effect_a", effect_a),
            Handler::new::<Ticked, _>("effect_b", effect_b),
            Handler::new::<Unknown, _>("now_known", now_known),
        ]),
    );
    assert!(
        app.dead_letters()
            .retry(unknown.event_id, NO_HANDLER)
            .await
            .unwrap()
    );
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_done WHERE handler = 'now_known'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM keel_delivery_errors e WHERE NOT EXISTS (
                 SELECT 1 FROM keel_deliveries d
                 WHERE d.event_id = e.event_id AND d.handler = e.handler)
             AND NOT EXISTS (
                 SELECT 1 FROM keel_done d
                 WHERE d.event_id = e.event_id AND d.handler = e.handler)"
        )
        .await,
        0,
        "an error row outlived its delivery"
    );
    app.shutdown().await.unwrap();
}

async fn now_known(_: &Unknown, _: &mut super::HandlerContext) -> Result<(), keel::Error> {
    Ok(())
}

/// A delivery whose every attempt stopped the process (it was claimed as often as its
/// policy allows, and no attempt recorded an outcome) goes to the dead letter the next
/// time it is claimed, without running its handler again.
async fn a_delivery_that_kills_its_process_is_not_run_forever(db: Database) {
    schema(&db).await;
    let handlers = || {
        registry(vec![
            Handler::new::<Ticked, _>("effect_a", effect_a)
                .retry(RetryPolicy::default().max_attempts(3)),
        ])
    };
    // Written for relays only, then claimed three times by processes that died.
    let producer = Dispatcher::with_options(
        db.clone(),
        handlers(),
        DeliveryOptions::default().fast_path(false),
    );
    producer
        .database()
        .clone()
        .unit_of_work(async |tx| {
            tx.record(Ticked { seq: 1 })?;
            tx.record(Ticked { seq: 2 })?;
            Ok(())
        })
        .await
        .unwrap()
        .into_value();
    db.execute_script(if POSTGRES {
        "UPDATE keel_deliveries SET attempts = 3
         WHERE event_id = (SELECT id FROM keel_events WHERE payload->>'seq' = '1')"
    } else {
        "UPDATE keel_deliveries SET attempts = 3
         WHERE event_id = (SELECT id FROM keel_events WHERE json_extract(payload, '$.seq') = 1)"
    })
    .await
    .unwrap();

    let app = app(&db, handlers());
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM effects").await,
        1,
        "the other event is delivered; the abandoned one never runs"
    );
    let dead = app.dead_letters().list(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let payload: serde_json::Value = serde_json::from_str(&dead[0].payload).unwrap();
    assert_eq!(payload["seq"], 1, "{dead:#?}");
    let reason = &dead[0].failures[0].error;
    assert!(
        reason.contains("abandoned after 3 attempts that never finished"),
        "{reason}"
    );
    app.shutdown().await.unwrap();
}

keel_testing::backend_tests!(
    poison_goes_to_the_dead_letter_and_the_rest_flows,
    a_delivery_that_kills_its_process_is_not_run_forever,
);
