-- The example's tables on SQLite: STRICT tables; the domain's enums as text that CHECK
-- constraints keep to known codes; booleans as 0/1; times as sqlx writes
-- `time::OffsetDateTime` (text); event ids as hyphenated UUID text, as Keel stores them;
-- JSON as text. Applied by `sqlx::migrate!`, recorded in `_sqlx_migrations`; Keel's own
-- tables are migrated by `db.migrate()`.

CREATE TABLE campaign_participations (
    id INTEGER PRIMARY KEY,
    campaign_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('Started', 'ToShare', 'Shared'))
) STRICT;

CREATE TABLE certification_courses (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    completed_at TEXT
) STRICT;

CREATE TABLE assessments (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN
        ('Certification', 'CompetenceEvaluation', 'Campaign', 'Demo', 'Preview')),
    state TEXT NOT NULL CHECK (state IN
        ('Started', 'Completed', 'Aborted', 'EndedBySupervisor', 'EndedDueToFinalization')),
    campaign_participation_id INTEGER REFERENCES campaign_participations (id),
    certification_course_id INTEGER REFERENCES certification_courses (id),
    version INTEGER NOT NULL
) STRICT;

CREATE TABLE answers (
    assessment_id INTEGER NOT NULL REFERENCES assessments (id),
    competence_code TEXT NOT NULL,
    area_code TEXT NOT NULL,
    correct INTEGER NOT NULL CHECK (correct IN (0, 1))
) STRICT;
CREATE INDEX answers_assessment ON answers (assessment_id);

CREATE TABLE badges (
    id INTEGER PRIMARY KEY,
    campaign_id INTEGER NOT NULL,
    badge_key TEXT NOT NULL,
    min_mastery_rate INTEGER NOT NULL
) STRICT;

CREATE TABLE badge_acquisitions (
    badge_id INTEGER NOT NULL REFERENCES badges (id),
    user_id INTEGER NOT NULL,
    campaign_participation_id INTEGER NOT NULL,
    UNIQUE (badge_id, user_id)
) STRICT;

CREATE TABLE assessment_results (
    id INTEGER PRIMARY KEY,
    assessment_id INTEGER NOT NULL UNIQUE REFERENCES assessments (id),
    emitter TEXT NOT NULL,
    pix_score INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('validated', 'rejected')),
    reproducibility_rate INTEGER NOT NULL
) STRICT;

CREATE TABLE competence_marks (
    assessment_result_id INTEGER NOT NULL REFERENCES assessment_results (id),
    competence_code TEXT NOT NULL,
    area_code TEXT NOT NULL,
    level INTEGER NOT NULL,
    score INTEGER NOT NULL
) STRICT;

CREATE TABLE user_statistics (
    user_id INTEGER PRIMARY KEY,
    completed_assessments INTEGER NOT NULL
) STRICT;

-- One row per notification the partner accepted; the event id was its idempotency key.
CREATE TABLE partner_sendings (
    event_id TEXT PRIMARY KEY,
    notification TEXT NOT NULL CHECK (json_valid(notification)),
    response_code INTEGER NOT NULL
) STRICT;

CREATE TABLE partner_certifications (
    user_id INTEGER NOT NULL,
    certification_course_id INTEGER NOT NULL,
    partner_key TEXT NOT NULL,
    UNIQUE (user_id, partner_key)
) STRICT;
