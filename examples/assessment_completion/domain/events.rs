use keel::DomainEvent;
use serde::{Deserialize, Serialize};

/// An assessment was completed. Recorded by the completion's unit of work, delivered to
/// handlers after its commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssessmentCompleted {
    pub assessment_id: i64,
    pub user_id: i64,
    pub campaign_participation_id: Option<i64>,
    pub certification_course_id: Option<i64>,
}

impl DomainEvent for AssessmentCompleted {
    const NAME: &'static str = "assessment.completed.v1";
    const AGGREGATE_TYPE: &'static str = "Assessment";
    fn aggregate_id(&self) -> String {
        self.assessment_id.to_string()
    }
}

/// A certification was scored. Recorded by the completion's unit of work for certifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificationScoringCompleted {
    pub certification_course_id: i64,
    pub user_id: i64,
    pub reproducibility_rate: i64,
    pub pix_score: i64,
}

impl DomainEvent for CertificationScoringCompleted {
    const NAME: &'static str = "certification.scoring_completed.v1";
    const AGGREGATE_TYPE: &'static str = "CertificationCourse";
    fn aggregate_id(&self) -> String {
        self.certification_course_id.to_string()
    }
}
