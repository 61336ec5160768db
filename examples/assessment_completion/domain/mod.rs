//! The domain: aggregates, events and the rules of completion. No database, no runtime:
//! everything here is tested with plain `#[test]`s.

mod assessment;
mod badge;
mod campaign_participation;
mod certification;
mod events;
mod partner;

pub use assessment::{
    AlreadyCompleted, Assessment, AssessmentId, AssessmentKind, AssessmentNotFound,
    AssessmentState, NotCompletable,
};
pub use badge::{Badge, BadgeAcquisition, earned, mastery_rate};
pub use campaign_participation::{CampaignParticipation, ParticipationStatus};
pub use certification::{Answer, AssessmentResult, ResultStatus, score};
pub use events::{AssessmentCompleted, CertificationScoringCompleted};
pub use partner::{PartnerNotification, PartnerSending};
