/// A badge of a campaign, acquired when the participant's mastery rate reaches the
/// badge's threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Badge {
    pub id: i64,
    pub key: String,
    /// Minimum mastery rate, in percent, to acquire the badge.
    pub min_mastery_rate: i64,
}

/// A badge acquired by a user through a campaign participation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadgeAcquisition {
    pub badge_id: i64,
    pub user_id: i64,
    pub campaign_participation_id: i64,
}

/// The mastery rate, in percent, of a participant's answers.
pub fn mastery_rate(answers: &[super::Answer]) -> i64 {
    if answers.is_empty() {
        return 0;
    }
    let correct = answers.iter().filter(|a| a.correct).count() as i64;
    correct * 100 / answers.len() as i64
}

/// The badges whose criteria the mastery rate meets.
pub fn earned(
    badges: &[Badge],
    rate: i64,
    user_id: i64,
    campaign_participation_id: i64,
) -> Vec<BadgeAcquisition> {
    badges
        .iter()
        .filter(|b| rate >= b.min_mastery_rate)
        .map(|b| BadgeAcquisition {
            badge_id: b.id,
            user_id,
            campaign_participation_id,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Answer;

    fn answers(correct: usize, wrong: usize) -> Vec<Answer> {
        let mut all = vec![Answer::new("1.1", "1", true); correct];
        all.extend(vec![Answer::new("1.1", "1", false); wrong]);
        all
    }

    #[test]
    fn badges_are_earned_from_the_threshold_up() {
        let badges = vec![
            Badge {
                id: 1,
                key: "BRONZE".into(),
                min_mastery_rate: 50,
            },
            Badge {
                id: 2,
                key: "GOLD".into(),
                min_mastery_rate: 90,
            },
        ];
        assert_eq!(mastery_rate(&answers(3, 1)), 75);
        let won = earned(&badges, mastery_rate(&answers(3, 1)), 7, 10);
        assert_eq!(won.iter().map(|b| b.badge_id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(earned(&badges, 90, 7, 10).len(), 2);
        assert!(earned(&badges, 49, 7, 10).is_empty());
        assert_eq!(mastery_rate(&[]), 0);
    }
}
