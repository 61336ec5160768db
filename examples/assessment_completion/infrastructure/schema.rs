//! The example's tables and seed data. Portable SQL: the same script runs on PostgreSQL
//! and SQLite.

use keel::{Database, Error, sqlx};

/// Drops and recreates the example's tables, then inserts the seed data:
///
/// - assessment 1: campaign (participation 10 of user 7, campaign 100), started, 3 of 4
///   answers right (75%: earns the BRONZE badge, not GOLD);
/// - assessment 2: certification (course 20 of user 7), started, 7 of 8 answers right;
/// - assessment 3: campaign, aborted (cannot be completed);
/// - assessment 4: campaign (participation 11 of user 8), started, 1 of 2 answers right.
pub async fn reset_with_seed_data(db: &Database) -> Result<(), Error> {
    db.execute_script(
        "DROP TABLE IF EXISTS partner_certifications;
         DROP TABLE IF EXISTS partner_sendings;
         DROP TABLE IF EXISTS user_statistics;
         DROP TABLE IF EXISTS competence_marks;
         DROP TABLE IF EXISTS assessment_results;
         DROP TABLE IF EXISTS badge_acquisitions;
         DROP TABLE IF EXISTS badges;
         DROP TABLE IF EXISTS answers;
         DROP TABLE IF EXISTS assessments;
         DROP TABLE IF EXISTS campaign_participations;
         DROP TABLE IF EXISTS certification_courses;
         CREATE TABLE campaign_participations (
             id BIGINT PRIMARY KEY,
             campaign_id BIGINT NOT NULL,
             user_id BIGINT NOT NULL,
             status TEXT NOT NULL
         );
         CREATE TABLE certification_courses (
             id BIGINT PRIMARY KEY,
             user_id BIGINT NOT NULL,
             completed_at TEXT
         );
         CREATE TABLE assessments (
             id BIGINT PRIMARY KEY,
             user_id BIGINT NOT NULL,
             kind TEXT NOT NULL,
             state TEXT NOT NULL,
             campaign_participation_id BIGINT REFERENCES campaign_participations (id),
             certification_course_id BIGINT REFERENCES certification_courses (id),
             version BIGINT NOT NULL
         );
         CREATE TABLE answers (
             assessment_id BIGINT NOT NULL REFERENCES assessments (id),
             competence_code TEXT NOT NULL,
             area_code TEXT NOT NULL,
             correct BIGINT NOT NULL
         );
         CREATE TABLE badges (
             id BIGINT PRIMARY KEY,
             campaign_id BIGINT NOT NULL,
             badge_key TEXT NOT NULL,
             min_mastery_rate BIGINT NOT NULL
         );
         CREATE TABLE badge_acquisitions (
             badge_id BIGINT NOT NULL REFERENCES badges (id),
             user_id BIGINT NOT NULL,
             campaign_participation_id BIGINT NOT NULL,
             UNIQUE (badge_id, user_id)
         );
         CREATE TABLE assessment_results (
             id BIGINT PRIMARY KEY,
             assessment_id BIGINT NOT NULL UNIQUE REFERENCES assessments (id),
             emitter TEXT NOT NULL,
             pix_score BIGINT NOT NULL,
             status TEXT NOT NULL,
             reproducibility_rate BIGINT NOT NULL
         );
         CREATE TABLE competence_marks (
             assessment_result_id BIGINT NOT NULL REFERENCES assessment_results (id),
             competence_code TEXT NOT NULL,
             area_code TEXT NOT NULL,
             level BIGINT NOT NULL,
             score BIGINT NOT NULL
         );
         CREATE TABLE user_statistics (
             user_id BIGINT PRIMARY KEY,
             completed_assessments BIGINT NOT NULL
         );
         CREATE TABLE partner_sendings (
             event_id TEXT PRIMARY KEY,
             campaign_participation_id BIGINT NOT NULL,
             response_code BIGINT NOT NULL
         );
         CREATE TABLE partner_certifications (
             user_id BIGINT NOT NULL,
             certification_course_id BIGINT NOT NULL,
             partner_key TEXT NOT NULL,
             UNIQUE (user_id, partner_key)
         );
         INSERT INTO campaign_participations VALUES (10, 100, 7, 'Started'), (11, 100, 8, 'Started');
         INSERT INTO certification_courses VALUES (20, 7, NULL);
         INSERT INTO assessments VALUES (1, 7, 'Campaign', 'Started', 10, NULL, 1);
         INSERT INTO assessments VALUES (2, 7, 'Certification', 'Started', NULL, 20, 1);
         INSERT INTO assessments VALUES (3, 7, 'Campaign', 'Aborted', 10, NULL, 1);
         INSERT INTO assessments VALUES (4, 8, 'Campaign', 'Started', 11, NULL, 1);
         INSERT INTO answers VALUES (1, '1.1', '1', 1), (1, '1.2', '1', 1), (1, '2.1', '2', 1), (1, '2.1', '2', 0);
         INSERT INTO answers VALUES (2, '1.1', '1', 1), (2, '1.1', '1', 1), (2, '1.2', '1', 1), (2, '2.1', '2', 1),
                                    (2, '2.1', '2', 1), (2, '3.1', '3', 1), (2, '3.1', '3', 1), (2, '3.2', '3', 0);
         INSERT INTO answers VALUES (4, '1.1', '1', 1), (4, '1.1', '1', 0);
         INSERT INTO badges VALUES (1, 100, 'BRONZE', 50), (2, 100, 'GOLD', 90);",
    )
    .await
}

/// A few lines describing the stored state.
pub async fn summary(db: &Database) -> Result<String, Error> {
    let mut conn = db.acquire().await?;
    let mut out = String::new();
    let assessments: Vec<(i64, String, String, i64)> =
        sqlx::query_as("SELECT id, kind, state, version FROM assessments ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    for (id, kind, state, version) in assessments {
        out += &format!("   assessment {id} ({kind}): {state}, v{version}\n");
    }
    let participations: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, status FROM campaign_participations ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    for (id, status) in participations {
        out += &format!("   campaign participation {id}: {status}\n");
    }
    let badges: Vec<(String, i64)> = sqlx::query_as(
        "SELECT b.badge_key, a.user_id FROM badge_acquisitions a JOIN badges b ON b.id = a.badge_id
         ORDER BY b.id",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (badge, user) in badges {
        out += &format!("   badge {badge} acquired by user {user}\n");
    }
    let results: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT assessment_id, pix_score, status FROM assessment_results")
            .fetch_all(&mut *conn)
            .await?;
    for (assessment, score, status) in results {
        let (marks,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM competence_marks WHERE assessment_result_id = $1")
                .bind(assessment)
                .fetch_one(&mut *conn)
                .await?;
        out += &format!(
            "   result of assessment {assessment}: pix score {score}, {status}, {marks} competence marks\n"
        );
    }
    let courses: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, completed_at FROM certification_courses ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    for (id, completed_at) in courses {
        let at = completed_at.as_deref().unwrap_or("not completed");
        out += &format!("   certification course {id}: {at}\n");
    }
    let statistics: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT user_id, completed_assessments FROM user_statistics ORDER BY user_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (user, completed) in statistics {
        out += &format!("   user {user}: {completed} completed assessment(s)\n");
    }
    let sendings: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT campaign_participation_id, response_code FROM partner_sendings ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (participation, code) in sendings {
        out +=
            &format!("   partner notified of participation {participation} (HTTP {code}), once\n");
    }
    let certifications: Vec<(i64, String)> =
        sqlx::query_as("SELECT user_id, partner_key FROM partner_certifications")
            .fetch_all(&mut *conn)
            .await?;
    for (user, partner) in certifications {
        out += &format!("   partner certification {partner} granted to user {user}\n");
    }
    Ok(out)
}
