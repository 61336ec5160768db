//! `keel migrate`, `keel purge`, `keel republish`, `keel backfill`, `keel unsubscribe`.

use std::time::Instant;

use keel::{Admin, Backend, Database, SchemaState};
use serde_json::json;

use crate::args::{BackfillArgs, Output, PurgeArgs, RepublishArgs, UnsubscribeArgs};
use crate::dead::confirm;
use crate::failure::Failure;
use crate::status::did_you_mean;
use crate::stdout::{counted, outln};

/// The prefix of the handler names of the forwarders to the broker (`keel::nats`).
const FORWARDER_PREFIX: &str = "forward:";

pub(crate) async fn migrate<B: Backend>(db: &Database<B>, json: bool) -> Result<(), Failure> {
    let before = db
        .schema_state()
        .await
        .map_err(Failure::database("read the schema"))?;
    db.migrate().await.map_err(Failure::database("migrate"))?;
    let applied = match before {
        SchemaState::Missing => "created Keel's tables".to_owned(),
        SchemaState::Behind { pending } => format!("applied {pending} migrations"),
        SchemaState::Current | SchemaState::Newer { .. } => "already up to date".to_owned(),
    };
    if json {
        outln!("{}", json!({ "migrated": applied }));
    } else {
        outln!("{applied} on {}", db.url());
    }
    Ok(())
}

pub(crate) async fn purge<B: Backend>(
    admin: &Admin<B>,
    args: &PurgeArgs,
    out: Output,
) -> Result<(), Failure> {
    if args.done_older_than.is_none() && args.dead_older_than.is_none() {
        return Err(Failure::usage(
            "say what to purge: --done-older-than AGE (finished deliveries) and/or \
             --dead-older-than AGE (dead letters), e.g. --done-older-than 7d",
        ));
    }
    let started = Instant::now();
    let removed = admin
        .purge(args.done_older_than, args.dead_older_than, |total| {
            eprintln!(
                "purged {total} rows so far ({} s)",
                started.elapsed().as_secs()
            );
        })
        .await
        .map_err(Failure::database("purge"))?;
    match out {
        Output::Json => outln!("{}", json!({ "removed": removed })),
        Output::Text => outln!(
            "purged {removed} rows (deliveries, their error history, events no delivery needs \
             any more, idle ordering keys)"
        ),
    }
    Ok(())
}

pub(crate) async fn republish<B: Backend>(
    admin: &Admin<B>,
    args: &RepublishArgs,
    out: Output,
) -> Result<(), Failure> {
    let forwarders: Vec<String> = match &args.handler {
        Some(handler) if !handler.starts_with(FORWARDER_PREFIX) => {
            return Err(Failure::usage(format!(
                "`{handler}` is not a forwarder (`{FORWARDER_PREFIX}…`): republish runs again only \
                 forwarders, whose receivers drop what they already have; another handler would \
                 repeat its effects"
            )));
        }
        Some(handler) => vec![handler.clone()],
        None => admin
            .subscriptions()
            .await
            .map_err(Failure::database("read the subscriptions"))?
            .into_iter()
            .map(|(_, handler)| handler)
            .filter(|handler| handler.starts_with(FORWARDER_PREFIX))
            .collect(),
    };
    if forwarders.is_empty() {
        return Err(Failure::nothing(
            "no forwarder (`forward:*` handler) has been recorded on this database: nothing \
             publishes to a broker",
        ));
    }
    let mut created = Vec::with_capacity(forwarders.len());
    for handler in &forwarders {
        let count = admin
            .create_deliveries(handler, args.since, true)
            .await
            .map_err(Failure::database("create the deliveries"))?;
        created.push((handler, count));
    }
    match out {
        Output::Json => {
            let per: serde_json::Map<String, serde_json::Value> = created
                .iter()
                .map(|(handler, count)| ((*handler).clone(), json!(count)))
                .collect();
            outln!("{}", json!({ "republished": per }));
        }
        Output::Text => {
            for (handler, count) in created {
                outln!("{handler}: {count} events to publish again");
            }
        }
    }
    Ok(())
}

pub(crate) async fn backfill<B: Backend>(
    admin: &Admin<B>,
    args: &BackfillArgs,
    out: Output,
) -> Result<(), Failure> {
    let created = match admin
        .create_deliveries(&args.handler, args.since, false)
        .await
    {
        Ok(created) => created,
        // Its one refusal: no relay has recorded the handler.
        Err(error @ keel::Error::Rejected(_)) => {
            let hint = did_you_mean(admin, &args.handler).await;
            return Err(Failure::nothing(format!("{error}{hint}")));
        }
        Err(error) => return Err(Failure::database("create the deliveries")(error)),
    };
    match out {
        Output::Json => outln!("{}", json!({ "created": created })),
        Output::Text => outln!(
            "{}: {} created for events it had none of",
            args.handler,
            counted(created, "delivery", "deliveries")
        ),
    }
    Ok(())
}

pub(crate) async fn unsubscribe<B: Backend>(
    admin: &Admin<B>,
    args: &UnsubscribeArgs,
    out: Output,
) -> Result<(), Failure> {
    let name = args.handler.as_str();
    ensure_recorded(admin, name).await?;
    let status = admin
        .status()
        .await
        .map_err(Failure::database("read the status"))?;
    let pending: i64 = status
        .handlers
        .iter()
        .filter(|h| h.handler == name)
        .map(|h| h.pending + h.in_flight + h.retrying)
        .sum();
    if pending > 0 && !args.yes {
        confirm(
            &format!("unsubscribe `{name}` and remove its {pending} pending deliveries?"),
            "unsubscribe",
        )?;
    }
    let removed = admin
        .unsubscribe(name)
        .await
        .map_err(Failure::database("unsubscribe"))?;
    match out {
        Output::Json => outln!(
            "{}",
            json!({ "subscriptions": removed.subscriptions, "deliveries": removed.deliveries })
        ),
        Output::Text => outln!(
            "unsubscribed `{name}`: {} and {} removed; its dead deliveries stay",
            counted(removed.subscriptions, "subscription", "subscriptions"),
            counted(removed.deliveries, "pending delivery", "pending deliveries")
        ),
    }
    Ok(())
}

/// Fails (exit code 3), naming the recorded handlers that end with `name`, unless a relay
/// has recorded a subscription of the handler `name`: `Admin::unsubscribe` removes what
/// there is, so it has no such refusal of its own.
async fn ensure_recorded<B: Backend>(admin: &Admin<B>, name: &str) -> Result<(), Failure> {
    let recorded = admin
        .subscriptions()
        .await
        .map_err(Failure::database("read the subscriptions"))?
        .iter()
        .any(|(_, handler)| handler == name);
    if recorded {
        return Ok(());
    }
    let hint = did_you_mean(admin, name).await;
    Err(Failure::nothing(format!(
        "no relay has recorded a handler named `{name}` on this database: nothing to remove\
         {hint}"
    )))
}
