//! Sending: inside a unit of work a command commits with it; a command nobody handles is
//! refused at send time when the handlers are known; a command has exactly one handler.

use std::time::Duration;

use keel::{Command, Error, NO_HANDLER, RegistryError, sqlx};
use serde::{Deserialize, Serialize};

use super::support::*;
use super::{B, Database, Handler, Registry};

#[derive(Serialize, Deserialize)]
struct Unhandled;

impl Command for Unhandled {
    const NAME: &'static str = "test.unhandled.v1";
}

async fn commands_commit_with_their_unit_of_work(db: Database) {
    schema(&db).await;
    let app = app_with(
        &db,
        Handler::command_batch::<VoteForPost, _>("count_votes", 100, count_votes),
    );
    let mut session = app.session();
    let err = session
        .unit_of_work(async |tx| {
            tx.send(VoteForPost {
                post_id: 1,
                user_id: 1,
            })?;
            Err::<(), _>(Error::rejected(std::io::Error::other("rolled back")))
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rolled back"));
    session
        .unit_of_work(async |tx| {
            sqlx::query("UPDATE posts SET likes = 100 WHERE id = 2")
                .execute(tx.conn())
                .await?;
            tx.send(VoteForPost {
                post_id: 2,
                user_id: 1,
            })?;
            Ok(())
        })
        .await
        .unwrap();
    delivered(&app).await;
    assert_eq!(scalar(&db, "SELECT likes FROM posts WHERE id = 1").await, 0);
    assert_eq!(
        scalar(&db, "SELECT likes FROM posts WHERE id = 2").await,
        101
    );

    // Known handlers: an unhandled command is refused when sent.
    let err = session.send(Unhandled).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoCommandHandler {
                command: "test.unhandled.v1"
            }
        ),
        "{err}"
    );
    let err = session
        .unit_of_work(async |tx| tx.send(Unhandled))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoCommandHandler { .. }));

    // A producer that does not know the handlers: the worker dead-letters it with a reason.
    // `send` returns the command's id, by which the dead letter finds it.
    let mut producer = db.clone();
    let id = producer.send(Unhandled).await.unwrap();
    assert!(
        app.wait_until_delivered(Duration::from_secs(20))
            .await
            .unwrap()
    );
    let dead = app.dead_letters().list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].handler, NO_HANDLER);
    assert_eq!(dead[0].event_id, id);
    let shown = app.dead_letters().show(id, NO_HANDLER).await.unwrap();
    assert!(shown.is_some(), "the dead letter of command {id}");
    app.shutdown().await.unwrap();
}

keel_testing::backend_tests!(commands_commit_with_their_unit_of_work);

#[test]
fn a_command_has_exactly_one_handler() {
    let mut registry = Registry::new();
    registry
        .register(Handler::command_batch::<VoteForPost, _>(
            "count_votes",
            10,
            count_votes,
        ))
        .unwrap();
    let err = registry
        .register(Handler::command_batch::<VoteForPost, _>(
            "other",
            10,
            count_votes,
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::SecondCommandHandler {
                existing: "count_votes",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("exactly one handler"));
}
