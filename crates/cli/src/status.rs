//! `keel status`: deliveries per handler, unrouted events and the relays at work.

use std::io::IsTerminal;
use std::time::Duration;

use keel::{Admin, Backend, Status};
use serde_json::{Value, json};

use crate::args::{Output, StatusArgs};
use crate::failure::Failure;
use crate::stdout::{out, outln};

pub(crate) async fn run<B: Backend>(
    admin: &Admin<B>,
    args: &StatusArgs,
    out: Output,
) -> Result<(), Failure> {
    let Some(every) = args.watch else {
        let status = read(admin).await?;
        print(&status, out);
        return Ok(());
    };
    let every = Duration::from_secs(every.max(1));
    let clear = out == Output::Text && std::io::stdout().is_terminal();
    loop {
        let status = read(admin).await?;
        if clear {
            out!("\x1b[2J\x1b[H");
        }
        print(&status, out);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn read<B: Backend>(admin: &Admin<B>) -> Result<Status, Failure> {
    admin
        .status()
        .await
        .map_err(Failure::database("read the status"))
}

fn print(status: &Status, out: Output) {
    match out {
        Output::Json => outln!("{}", to_json(status)),
        Output::Text => out!("{}", to_text(status)),
    }
}

/// The JSON document of `keel status --json`.
pub(crate) fn to_json(status: &Status) -> Value {
    let handlers: Vec<Value> = status
        .handlers
        .iter()
        .map(|h| {
            let leases: Vec<Value> = h
                .leases
                .iter()
                .map(|l| json!({ "process": l.process, "deliveries": l.deliveries }))
                .collect();
            json!({
                "message": h.message,
                "handler": h.handler,
                "pending": h.pending,
                "in_flight": h.in_flight,
                "retrying": h.retrying,
                "dead": h.dead,
                "oldest_pending_ms": h.oldest_pending_ms,
                "done_last_minute": h.done_last_minute,
                "leases": leases,
            })
        })
        .collect();
    let relays: Vec<Value> = status
        .relays
        .iter()
        .map(|r| {
            json!({
                "process": r.process,
                "host": r.host,
                "pid": r.pid,
                "started_at": crate::dead::rfc3339(r.started_at),
                "silent_ms": r.silent_ms,
            })
        })
        .collect();
    json!({ "handlers": handlers, "unrouted": status.unrouted, "relays": relays })
}

fn to_text(status: &Status) -> String {
    let mut rows = vec![
        [
            "MESSAGE",
            "HANDLER",
            "PENDING",
            "IN FLIGHT",
            "RETRYING",
            "DEAD",
            "OLDEST",
            "DONE/1M",
            "LEASES",
        ]
        .map(String::from),
    ];
    for h in &status.handlers {
        let leases: Vec<String> = h
            .leases
            .iter()
            .map(|l| format!("{}×{}", l.process, l.deliveries))
            .collect();
        rows.push([
            h.message.clone(),
            h.handler.clone(),
            h.pending.to_string(),
            h.in_flight.to_string(),
            h.retrying.to_string(),
            h.dead.to_string(),
            h.oldest_pending_ms.map_or("-".into(), age),
            h.done_last_minute.to_string(),
            if leases.is_empty() {
                "-".into()
            } else {
                leases.join(" ")
            },
        ]);
    }
    let mut text = table(&rows);
    if status.handlers.is_empty() {
        text.push_str("(no handler has been recorded by a relay on this database)\n");
    }
    text.push_str(&format!("\nunrouted events: {}\n", status.unrouted));
    if status.relays.is_empty() {
        text.push_str(
            "relays: none (a relay leaves this list when it stops, or a day after it last \
             reported)\n",
        );
    } else {
        let mut rows = vec![["PROCESS", "HOST", "PID", "LAST SEEN"].map(String::from)];
        for r in &status.relays {
            rows.push([
                r.process.clone(),
                r.host.clone(),
                r.pid.to_string(),
                format!("{} ago", age(r.silent_ms)),
            ]);
        }
        text.push('\n');
        text.push_str(&table(&rows));
    }
    text
}

/// A duration in milliseconds for people: `850ms`, `12s`, `4m05s`, `3h20m`, `2d04h`.
pub(crate) fn age(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Rows as left-aligned columns separated by two spaces.
pub(crate) fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// The recorded handlers whose names end with `::name` (a handler registered with
/// `register_handler!` is named by its function's path, `my_service::handlers::notify`),
/// or `None` when `name` is a recorded handler's whole name.
async fn ending_with<B: Backend>(admin: &Admin<B>, name: &str) -> Option<Vec<String>> {
    let status = admin.status().await.ok()?;
    if status.handlers.iter().any(|h| h.handler == name) {
        return None;
    }
    let mut names: Vec<String> = status
        .handlers
        .into_iter()
        .map(|h| h.handler)
        .filter(|known| known.ends_with(&format!("::{name}")))
        .collect();
    names.sort_unstable();
    names.dedup();
    Some(names)
}

/// "did you mean `a` or `b`?"
fn suggest(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!("did you mean {}?", quoted.join(" or "))
}

/// When `name` (given to `--handler`) names no handler of this database: that, and which
/// recorded handlers end with that name.
pub(crate) async fn name_hint<B: Backend>(admin: &Admin<B>, name: &str) -> Option<String> {
    let names = ending_with(admin, name).await?;
    Some(if names.is_empty() {
        format!("no handler is named `{name}` (`keel status` lists them)")
    } else {
        format!(
            "no handler is named `{name}`; handler names are whole, {}",
            suggest(&names)
        )
    })
}

/// For a message that already says `name` is unknown: `; did you mean …?` when recorded
/// handlers end with `name`, else nothing.
pub(crate) async fn did_you_mean<B: Backend>(admin: &Admin<B>, name: &str) -> String {
    match ending_with(admin, name).await {
        Some(names) if !names.is_empty() => format!("; {}", suggest(&names)),
        _ => String::new(),
    }
}
