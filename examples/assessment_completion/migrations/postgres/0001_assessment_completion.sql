-- The example's tables on PostgreSQL: native types (enum types for the domain's enums,
-- boolean, timestamptz, uuid, jsonb). Applied by `sqlx::migrate!`, recorded in
-- `_sqlx_migrations`; Keel's own tables are migrated by `db.migrate()`.

CREATE TYPE assessment_kind AS ENUM
    ('Certification', 'CompetenceEvaluation', 'Campaign', 'Demo', 'Preview');
CREATE TYPE assessment_state AS ENUM
    ('Started', 'Completed', 'Aborted', 'EndedBySupervisor', 'EndedDueToFinalization');
CREATE TYPE participation_status AS ENUM ('Started', 'ToShare', 'Shared');
CREATE TYPE result_status AS ENUM ('validated', 'rejected');

CREATE TABLE campaign_participations (
    id BIGINT PRIMARY KEY,
    campaign_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    status participation_status NOT NULL
);

CREATE TABLE certification_courses (
    id BIGINT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    completed_at TIMESTAMPTZ
);

CREATE TABLE assessments (
    id BIGINT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    kind assessment_kind NOT NULL,
    state assessment_state NOT NULL,
    campaign_participation_id BIGINT REFERENCES campaign_participations (id),
    certification_course_id BIGINT REFERENCES certification_courses (id),
    version BIGINT NOT NULL
);

CREATE TABLE answers (
    assessment_id BIGINT NOT NULL REFERENCES assessments (id),
    competence_code TEXT NOT NULL,
    area_code TEXT NOT NULL,
    correct BOOLEAN NOT NULL
);
CREATE INDEX answers_assessment ON answers (assessment_id);

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
    status result_status NOT NULL,
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

-- One row per notification the partner accepted; the event id was its idempotency key.
CREATE TABLE partner_sendings (
    event_id UUID PRIMARY KEY,
    notification JSONB NOT NULL,
    response_code INTEGER NOT NULL
);

CREATE TABLE partner_certifications (
    user_id BIGINT NOT NULL,
    certification_course_id BIGINT NOT NULL,
    partner_key TEXT NOT NULL,
    UNIQUE (user_id, partner_key)
);
