/// Where a user's participation in a campaign stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipationStatus {
    Started,
    ToShare,
    Shared,
}

/// A user's participation in a campaign.
#[derive(Debug, Clone)]
pub struct CampaignParticipation {
    pub id: i64,
    pub campaign_id: i64,
    pub status: ParticipationStatus,
}

impl CampaignParticipation {
    /// The assessment of the participation is done: results are ready to be shared.
    pub fn assessment_completed(&mut self) {
        if self.status == ParticipationStatus::Started {
            self.status = ParticipationStatus::ToShare;
        }
    }
}
