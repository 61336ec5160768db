use keel::{Database, Error, sqlx};

/// Drops and recreates the example's tables, then inserts the seed data.
pub async fn reset_with_seed_data(db: &Database) -> Result<(), Error> {
    db.execute_script(
        "DROP TABLE IF EXISTS user_statistics;
         DROP TABLE IF EXISTS assessments;
         DROP TABLE IF EXISTS campaign_participations;
         DROP TABLE IF EXISTS certification_courses;
         CREATE TABLE campaign_participations (
             id BIGINT PRIMARY KEY,
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
         CREATE TABLE user_statistics (
             user_id BIGINT PRIMARY KEY,
             completed_assessments BIGINT NOT NULL
         );
         INSERT INTO campaign_participations (id, user_id, status) VALUES (10, 7, 'Started');
         INSERT INTO certification_courses (id, user_id, completed_at) VALUES (20, 7, NULL);
         INSERT INTO assessments VALUES (1, 7, 'Campaign', 'Started', 10, NULL, 1);
         INSERT INTO assessments VALUES (2, 7, 'Certification', 'Started', NULL, 20, 1);",
    )
    .await
}

/// A few lines describing the stored state.
pub async fn summary(db: &Database) -> Result<String, Error> {
    let mut conn = db.acquire().await?;
    let assessments: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT id, state, version FROM assessments ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    let participations: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, status FROM campaign_participations ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    let courses: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, completed_at FROM certification_courses ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    let statistics: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT user_id, completed_assessments FROM user_statistics ORDER BY user_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = String::new();
    for (id, state, version) in assessments {
        out += &format!("   assessment {id}: {state} (v{version})\n");
    }
    for (id, status) in participations {
        out += &format!("   campaign participation {id}: {status}\n");
    }
    for (id, completed_at) in courses {
        let at = completed_at.as_deref().unwrap_or("not completed");
        out += &format!("   certification course {id}: {at}\n");
    }
    for (user_id, completed) in statistics {
        out += &format!("   user {user_id}: {completed} completed assessments\n");
    }
    Ok(out)
}
