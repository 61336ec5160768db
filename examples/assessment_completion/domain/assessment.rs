use std::fmt;

use keel::{Aggregate, Version};
use serde::Serialize;

/// An assessment's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssessmentId(pub i64);

impl fmt::Display for AssessmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<AssessmentId> for keel::Key {
    fn from(id: AssessmentId) -> Self {
        keel::Key::Int(id.0)
    }
}

/// What an assessment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AssessmentKind {
    Certification,
    CompetenceEvaluation,
    Campaign,
    Demo,
    Preview,
}

/// Where an assessment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AssessmentState {
    Started,
    Completed,
    Aborted,
    EndedBySupervisor,
    EndedDueToFinalization,
}

/// An assessment a user takes.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub id: AssessmentId,
    pub user_id: i64,
    pub kind: AssessmentKind,
    pub state: AssessmentState,
    pub campaign_participation_id: Option<i64>,
    pub certification_course_id: Option<i64>,
    pub version: Version,
}

impl Aggregate for Assessment {
    const TYPE: &'static str = "Assessment";
    type Id = AssessmentId;
    fn id(&self) -> &AssessmentId {
        &self.id
    }
    fn version(&self) -> Version {
        self.version
    }
}

/// The assessment does not exist.
#[derive(Debug, thiserror::Error)]
#[error("assessment {0} not found")]
pub struct AssessmentNotFound(pub AssessmentId);

impl keel::Rejection for AssessmentNotFound {}

/// The assessment was completed before: completing twice is refused.
#[derive(Debug, thiserror::Error)]
#[error("assessment {0} is already completed")]
pub struct AlreadyCompleted(pub AssessmentId);

impl keel::Rejection for AlreadyCompleted {}

/// The assessment ended another way (aborted, ended by a supervisor…): it cannot be completed.
#[derive(Debug, thiserror::Error)]
#[error("assessment {id} cannot be completed: it is {state:?}")]
pub struct NotCompletable {
    pub id: AssessmentId,
    pub state: AssessmentState,
}

impl keel::Rejection for NotCompletable {}

impl Assessment {
    /// Marks the assessment completed, or refuses if it is already completed or ended
    /// another way.
    pub fn complete(&mut self) -> Result<(), keel::Error> {
        match self.state {
            AssessmentState::Started => {
                self.state = AssessmentState::Completed;
                Ok(())
            }
            AssessmentState::Completed => Err(AlreadyCompleted(self.id).into()),
            state => Err(NotCompletable { id: self.id, state }.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> Assessment {
        Assessment {
            id: AssessmentId(1),
            user_id: 7,
            kind: AssessmentKind::Campaign,
            state: AssessmentState::Started,
            campaign_participation_id: Some(10),
            certification_course_id: None,
            version: Version::INITIAL,
        }
    }

    #[test]
    fn completing_twice_is_refused() {
        let mut assessment = started();
        assessment.complete().unwrap();
        assert_eq!(assessment.state, AssessmentState::Completed);
        let again = assessment.complete().unwrap_err();
        assert!(again.rejection::<AlreadyCompleted>().is_some());
    }

    #[test]
    fn an_aborted_assessment_cannot_be_completed() {
        let mut assessment = started();
        assessment.state = AssessmentState::Aborted;
        let refused = assessment.complete().unwrap_err();
        let refused = refused.rejection::<NotCompletable>().unwrap();
        assert_eq!(refused.state, AssessmentState::Aborted);
        assert_eq!(assessment.state, AssessmentState::Aborted);
    }
}
