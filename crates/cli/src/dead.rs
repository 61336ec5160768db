//! `keel dead list|show|retry|discard`.

use std::io::{BufRead, IsTerminal, Write};

use keel::{Admin, Backend, DeadLetter};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::args::{Bulk, DeadAction, Output, Select};
use crate::failure::Failure;
use crate::status::{name_hint, table};
use crate::stdout::{counted, out, outln};

/// What `list` and `show` print when `--limit` is not given.
const SHOWN: u32 = 100;

pub(crate) async fn run<B: Backend>(
    admin: &Admin<B>,
    action: DeadAction,
    out: Output,
) -> Result<(), Failure> {
    match action {
        DeadAction::List(select) => {
            let letters = find(admin, &select, SHOWN).await?;
            match out {
                Output::Json => outln!("{}", Value::Array(letters.iter().map(to_json).collect())),
                Output::Text => out!("{}", list_text(&letters)),
            }
            if let (true, Some(name)) = (letters.is_empty(), &select.handler) {
                if let Some(hint) = name_hint(admin, name).await {
                    eprintln!("note: {hint}");
                }
            } else {
                note_if_cut(&select, letters.len());
            }
            Ok(())
        }
        DeadAction::Show(select) => {
            let letters = find(admin, &select, SHOWN).await?;
            if letters.is_empty() {
                return Err(nothing_matches(admin, &select, "").await);
            }
            match out {
                Output::Json => outln!("{}", Value::Array(letters.iter().map(to_json).collect())),
                Output::Text => letters.iter().for_each(|l| out!("{}", show_text(l))),
            }
            note_if_cut(&select, letters.len());
            Ok(())
        }
        DeadAction::Retry(bulk) => apply(admin, bulk, Act::Retry, out).await,
        DeadAction::Discard(bulk) => apply(admin, bulk, Act::Discard, out).await,
    }
}

async fn find<B: Backend>(
    admin: &Admin<B>,
    select: &Select,
    limit: u32,
) -> Result<Vec<DeadLetter>, Failure> {
    admin
        .dead_letters()
        .find(&select.filter(limit))
        .await
        .map_err(Failure::database("read the dead letter"))
}

/// Says on standard error when `list` or `show` printed [`SHOWN`] without `--limit`:
/// there may be more.
fn note_if_cut(select: &Select, shown: usize) {
    if select.limit.is_none() && shown == SHOWN as usize {
        eprintln!("note: the first {SHOWN} shown; pass --limit N for more");
    }
}

/// "No dead delivery matches" (then `then`), with the hint of [`name_hint`] if any.
async fn nothing_matches<B: Backend>(admin: &Admin<B>, select: &Select, then: &str) -> Failure {
    let hint = match &select.handler {
        Some(name) => name_hint(admin, name)
            .await
            .map(|hint| format!("; {hint}"))
            .unwrap_or_default(),
        None => String::new(),
    };
    Failure::nothing(format!("no dead delivery matches{then}{hint}"))
}

#[derive(Clone, Copy)]
enum Act {
    Retry,
    Discard,
}

impl Act {
    fn verb(self) -> &'static str {
        match self {
            Act::Retry => "retry",
            Act::Discard => "discard",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Act::Retry => "retried",
            Act::Discard => "discarded",
        }
    }
}

async fn apply<B: Backend>(
    admin: &Admin<B>,
    bulk: Bulk,
    act: Act,
    out: Output,
) -> Result<(), Failure> {
    let verb = act.verb();
    if !bulk.select.narrowed() && !bulk.all {
        return Err(Failure::usage(format!(
            "say which dead deliveries to {verb}: an EVENT_ID, a filter (--handler, --event, \
             --error, --older-than, --newer-than), or --all"
        )));
    }
    let letters = find(admin, &bulk.select, u32::MAX).await?;
    if letters.is_empty() {
        let nothing_to = format!(": nothing to {verb}");
        return Err(nothing_matches(admin, &bulk.select, &nothing_to).await);
    }
    if letters.len() > 1 && !bulk.yes {
        confirm(&format!("{verb} {}?", deliveries(letters.len())), verb)?;
    }
    let dead = admin.dead_letters();
    let (total, mut changed) = (letters.len(), Vec::with_capacity(letters.len()));
    for (n, letter) in letters.iter().enumerate() {
        let applied = match act {
            Act::Retry => dead.retry(letter.event_id, &letter.handler).await,
            Act::Discard => dead.discard(letter.event_id, &letter.handler).await,
        }
        .map_err(|error| {
            Failure::failed(format!(
                "cannot {verb} ({} of {total} done before this error): {error}",
                changed.len()
            ))
        })?;
        // A delivery retried or discarded meanwhile by someone else is left out.
        if applied {
            changed.push(letter);
        }
        if total >= 1000 && (n + 1) % 1000 == 0 {
            eprintln!("{} {} of {total}", act.done(), n + 1);
        }
    }
    match out {
        Output::Json => {
            let deliveries: Vec<Value> = changed
                .iter()
                .map(|l| json!({ "event_id": l.event_id.to_string(), "handler": l.handler }))
                .collect();
            outln!(
                "{}",
                json!({ act.done(): changed.len(), "deliveries": deliveries })
            );
        }
        Output::Text => outln!("{} {}", act.done(), deliveries(changed.len())),
    }
    Ok(())
}

/// `1 dead delivery`, `3 dead deliveries`.
fn deliveries(count: usize) -> String {
    counted(count as u64, "dead delivery", "dead deliveries")
}

/// Asks on the terminal; refuses when standard input is not one.
pub(crate) fn confirm(question: &str, verb: &str) -> Result<(), Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!(
            "{question} Standard input is not a terminal: pass --yes to {verb} without asking"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(Failure::usage("not confirmed: nothing changed")),
    }
}

/// A time as RFC 3339.
pub(crate) fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| time.to_string())
}

/// One dead delivery as JSON, every attempt included.
fn to_json(letter: &DeadLetter) -> Value {
    let failures: Vec<Value> = letter
        .failures
        .iter()
        .map(|f| json!({ "attempt": f.attempt, "failed_at": rfc3339(f.failed_at), "error": f.error }))
        .collect();
    let payload = serde_json::from_str::<Value>(&letter.payload)
        .unwrap_or_else(|_| Value::String(letter.payload.clone()));
    json!({
        "event_id": letter.event_id.to_string(),
        "event": letter.event_name,
        "handler": letter.handler,
        "attempts": letter.attempts,
        "payload": payload,
        "failures": failures,
    })
}

fn list_text(letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return "no dead deliveries\n".to_owned();
    }
    let mut rows =
        vec![["EVENT ID", "EVENT", "HANDLER", "ATTEMPTS", "LAST ERROR"].map(String::from)];
    for l in letters {
        let error = l.failures.last().map_or("", |f| f.error.as_str());
        rows.push([
            l.event_id.to_string(),
            l.event_name.clone(),
            l.handler.clone(),
            l.attempts.to_string(),
            shorten(error, 80),
        ]);
    }
    table(&rows)
}

fn show_text(letter: &DeadLetter) -> String {
    let mut text = format!(
        "event     {}\nname      {}\nhandler   {}\nattempts  {}\npayload   {}\n",
        letter.event_id, letter.event_name, letter.handler, letter.attempts, letter.payload
    );
    for failure in &letter.failures {
        text.push_str(&format!(
            "  #{:<3} {}  {}\n",
            failure.attempt,
            rfc3339(failure.failed_at),
            failure.error.replace('\n', " ")
        ));
    }
    text.push('\n');
    text
}

/// `text` on one line, cut to `max` characters with an ellipsis.
fn shorten(text: &str, max: usize) -> String {
    let line = text.replace(['\n', '\r'], " ");
    if line.chars().count() <= max {
        return line;
    }
    let cut: String = line.chars().take(max - 1).collect();
    format!("{cut}…")
}
