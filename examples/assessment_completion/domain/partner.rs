use keel::EventId;
use serde::{Deserialize, Serialize};

/// What the campaign's partner is told when a participation's results are ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerNotification {
    pub campaign_participation_id: i64,
    pub user_id: i64,
}

/// A notification the partner accepted, recorded once per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerSending {
    /// The event that caused it, also the idempotency key sent to the partner.
    pub event_id: EventId,
    pub notification: PartnerNotification,
    /// The partner's HTTP status code.
    pub response_code: u16,
}
