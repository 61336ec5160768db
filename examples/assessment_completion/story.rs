//! The story the example tells when run without arguments.

use std::time::Duration;

use keel::{Database, Error};

use crate::domain::AssessmentId;
use crate::infrastructure::{Schema, partner, seed_demo_data};
use crate::ports::Report;
use crate::use_cases::{Completion, complete_assessment};

fn outcome(result: &Result<Completion, Error>) -> String {
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

/// A handler's short name: `…::user_statistics::count_completion` is shown as
/// `count_completion`.
fn short(handler: &str) -> &str {
    handler.rsplit("::").next().unwrap_or(handler)
}

pub async fn tell<B: Schema>(
    db: Database<B>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if !seed_demo_data(&db).await? {
        return Err(format!(
            "{} already holds the demo's rows: the story runs once, on a fresh database",
            db.url()
        )
        .into());
    }
    println!("database   {} ({}), seed data loaded", db.url(), B::NAME);
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
    let first = complete_assessment(&mut session, AssessmentId(1)).await;
    println!("   {}", outcome(&first));
    println!("2. complete it again");
    let again = complete_assessment(&mut session, AssessmentId(1)).await;
    println!("   {}", outcome(&again));
    println!("3. complete aborted assessment 3");
    let aborted = complete_assessment(&mut session, AssessmentId(3)).await;
    println!("   {}", outcome(&aborted));
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
    let report = B::report(&mut *app.database().acquire().await?).await?;
    println!(
        "   {} events recorded, delivered to their handlers:",
        report.events
    );
    for delivery in &report.deliveries {
        let handler = short(&delivery.handler);
        let (event, status, attempts) = (&delivery.event, &delivery.status, delivery.attempts);
        let mut line =
            format!("   {event:<38} -> {handler:<28} {status} after {attempts} attempt(s)");
        let answers = log.answers(&delivery.event_id.to_string());
        if handler == "notify_partner" && !answers.is_empty() {
            line += &format!(" (partner answered {answers:?})");
        }
        println!("{line}");
    }

    println!("\nfinal state");
    print!("{}", summary(&report));
    let dead = app.dead_letters().count().await?;
    app.shutdown().await?;
    if dead > 0 {
        return Err(format!("{dead} deliveries ended in the dead letter").into());
    }
    Ok(())
}

/// A few lines describing the stored state.
fn summary(report: &Report) -> String {
    let mut out = String::new();
    for a in &report.assessments {
        let (id, kind, state, version) = (a.id, a.kind, a.state, a.version.get());
        out += &format!("   assessment {id} ({kind:?}): {state:?}, v{version}\n");
    }
    for p in &report.participations {
        out += &format!("   campaign participation {}: {:?}\n", p.id, p.status);
    }
    for (badge, user) in &report.acquired_badges {
        out += &format!("   badge {badge} acquired by user {user}\n");
    }
    for r in &report.results {
        out += &format!(
            "   result of assessment {}: pix score {}, {:?}, {} competence marks\n",
            r.assessment_id, r.pix_score, r.status, r.competence_marks
        );
    }
    for (id, completed_at) in &report.courses {
        let at = completed_at.map_or("not completed".to_owned(), |at| {
            format!("completed at {at}")
        });
        out += &format!("   certification course {id}: {at}\n");
    }
    for (user, completed) in &report.statistics {
        out += &format!("   user {user}: {completed} completed assessment(s)\n");
    }
    for s in &report.sendings {
        let (participation, code) = (s.notification.campaign_participation_id, s.response_code);
        out +=
            &format!("   partner notified of participation {participation} (HTTP {code}), once\n");
    }
    for (user, partner) in &report.partner_certifications {
        out += &format!("   partner certification {partner} granted to user {user}\n");
    }
    out
}
