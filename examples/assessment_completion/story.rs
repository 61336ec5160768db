//! The story the example tells when run without arguments.

use std::time::Duration;

use keel::{Error, sqlx};

use crate::domain::AssessmentId;
use crate::infrastructure::partner;
use crate::use_cases::complete_assessment;

fn outcome(result: &Result<crate::use_cases::Completion, Error>) -> String {
    match result {
        Ok(c) => {
            let mut text = format!("committed (assessment v{})", c.version);
            if !c.badges.is_empty() {
                text += &format!(", badges {:?}", c.badges);
            }
            if let (Some(score), Some(certified)) = (c.pix_score, c.certified) {
                text += &format!(", pix score {score}, certified: {certified}");
            }
            text
        }
        Err(error) => format!("refused, nothing written: {error}"),
    }
}

pub async fn tell() -> Result<(), Box<dyn std::error::Error>> {
    let db = super::open().await?;
    println!(
        "database   {} ({:?}), seed data loaded",
        db.url(),
        db.backend()
    );
    let (address, log) = partner::start_stub(2).await?;
    partner::configure(format!("http://{address}"));
    println!("partner    stub on {address}: refuses each notification twice (503), then accepts");
    let app = super::start(db)?;
    for handler in app.dispatcher().registry().handlers() {
        println!("handler    {} on {}", handler.name(), handler.event());
    }

    let mut session = app.session();
    println!(
        "\n1. complete campaign assessment 1 (one unit of work: assessment, participation, badges)"
    );
    println!(
        "   {}",
        outcome(&complete_assessment(&mut session, AssessmentId(1)).await)
    );
    println!("2. complete it again");
    println!(
        "   {}",
        outcome(&complete_assessment(&mut session, AssessmentId(1)).await)
    );
    println!("3. complete aborted assessment 3");
    println!(
        "   {}",
        outcome(&complete_assessment(&mut session, AssessmentId(3)).await)
    );
    println!(
        "4. two requests complete certification assessment 2 at the same moment (scoring, result, course)"
    );
    let (mut first, mut second) = (app.session(), app.session());
    let (a, b) = tokio::join!(
        complete_assessment(&mut first, AssessmentId(2)),
        complete_assessment(&mut second, AssessmentId(2)),
    );
    println!("   request a: {}", outcome(&a));
    println!("   request b: {}", outcome(&b));
    if a.is_ok() == b.is_ok() {
        return Err("exactly one of two concurrent completions must commit".into());
    }

    println!("\n5. after the commits, the handlers run on their own (retried when they fail)");
    if !app.wait_until_delivered(Duration::from_secs(30)).await? {
        return Err("deliveries still pending after 30 s".into());
    }
    let mut conn = app.database().acquire().await?;
    let deliveries: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT e.id, e.name, d.handler, d.status, d.attempts FROM keel_deliveries d
         JOIN keel_events e ON e.id = d.event_id ORDER BY e.id, d.handler",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (event_id, event, handler, status, attempts) in &deliveries {
        let handler = handler.rsplit("::").next().unwrap_or(handler);
        let mut line =
            format!("   {event:<38} -> {handler:<28} {status} after {attempts} attempt(s)");
        let answers = log.answers(event_id);
        if handler == "notify_partner" && !answers.is_empty() {
            line += &format!(" (partner answered {answers:?})");
        }
        println!("{line}");
    }
    drop(conn);

    println!("\nfinal state");
    print!(
        "{}",
        crate::infrastructure::schema::summary(app.database()).await?
    );
    let dead = app.dead_letters().count().await?;
    app.shutdown().await;
    if dead > 0 {
        return Err(format!("{dead} deliveries ended in the dead letter").into());
    }
    Ok(())
}
