use std::collections::BTreeMap;

/// One answer of an assessment: the competence it tests and whether it was right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub competence_code: String,
    pub area_code: String,
    pub correct: bool,
}

#[cfg(test)]
impl Answer {
    pub fn new(competence_code: &str, area_code: &str, correct: bool) -> Self {
        Answer {
            competence_code: competence_code.to_owned(),
            area_code: area_code.to_owned(),
            correct,
        }
    }
}

/// The level and score reached in one competence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompetenceMark {
    pub competence_code: String,
    pub area_code: String,
    pub level: i64,
    pub score: i64,
}

/// Whether a certification is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultStatus {
    Validated,
    Rejected,
}

/// The result of scoring a certification assessment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssessmentResult {
    pub assessment_id: i64,
    pub emitter: &'static str,
    pub pix_score: i64,
    pub status: ResultStatus,
    pub reproducibility_rate: i64,
    pub competence_marks: Vec<CompetenceMark>,
}

/// Pix points per correct answer, and per level.
const POINTS_PER_ANSWER: i64 = 8;
const POINTS_PER_LEVEL: i64 = 8;
/// A competence is capped at level 5.
const MAX_SCORE: i64 = 5 * POINTS_PER_LEVEL;
/// Below this reproducibility rate (percent of correct answers), the result is rejected.
const MIN_REPRODUCIBILITY: i64 = 50;

/// Scores a certification from its answers: per competence, points for correct answers
/// (capped at level 5); the reproducibility rate decides whether it is validated.
pub fn score(assessment_id: i64, answers: &[Answer]) -> AssessmentResult {
    let mut by_competence: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for answer in answers {
        let points = by_competence
            .entry((&answer.competence_code, &answer.area_code))
            .or_default();
        if answer.correct {
            *points = (*points + POINTS_PER_ANSWER).min(MAX_SCORE);
        }
    }
    let competence_marks: Vec<CompetenceMark> = by_competence
        .into_iter()
        .map(|((competence, area), score)| CompetenceMark {
            competence_code: competence.to_owned(),
            area_code: area.to_owned(),
            level: score / POINTS_PER_LEVEL,
            score,
        })
        .collect();
    let reproducibility_rate = super::badge::mastery_rate(answers);
    let status = if reproducibility_rate >= MIN_REPRODUCIBILITY {
        ResultStatus::Validated
    } else {
        ResultStatus::Rejected
    };
    AssessmentResult {
        assessment_id,
        emitter: "PIX-ALGO",
        pix_score: competence_marks.iter().map(|m| m.score).sum(),
        status,
        reproducibility_rate,
        competence_marks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_per_competence_capped_at_level_five() {
        let mut answers = vec![Answer::new("1.1", "1", true); 7];
        answers.push(Answer::new("2.1", "2", true));
        answers.push(Answer::new("2.1", "2", false));
        let result = score(9, &answers);
        let marks: Vec<(String, i64, i64)> = result
            .competence_marks
            .iter()
            .map(|m| (m.competence_code.clone(), m.level, m.score))
            .collect();
        assert_eq!(marks, vec![("1.1".into(), 5, 40), ("2.1".into(), 1, 8)]);
        assert_eq!(result.pix_score, 48);
        assert_eq!(result.reproducibility_rate, 88);
        assert_eq!(result.status, ResultStatus::Validated);
    }

    #[test]
    fn low_reproducibility_is_rejected() {
        let answers = vec![
            Answer::new("1.1", "1", true),
            Answer::new("1.1", "1", false),
            Answer::new("1.1", "1", false),
        ];
        assert_eq!(score(1, &answers).status, ResultStatus::Rejected);
    }
}
