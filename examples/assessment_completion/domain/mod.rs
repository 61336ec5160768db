//! The domain: aggregates and the rules of completion. No database, no runtime.

mod assessment;
mod campaign_participation;
mod events;

pub use assessment::{AlreadyCompleted, Assessment, AssessmentId, AssessmentKind, AssessmentState};
pub use campaign_participation::{CampaignParticipation, ParticipationStatus};
pub use events::AssessmentCompleted;
