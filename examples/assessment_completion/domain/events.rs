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
