//! The codes stored for the domain's enums, in one place for both adapters: written with
//! `code`, read back with `parse`, which refuses a code it does not know. PostgreSQL holds
//! them in enum types, SQLite in `CHECK`ed text (see the migrations); neither accepts a
//! code missing here.

use keel::Error;

use crate::domain::{AssessmentKind, AssessmentState, ParticipationStatus, ResultStatus};

/// An enum stored as a code.
pub trait Code: Sized + Copy + 'static {
    /// Where it is stored, for errors (`assessments.kind`).
    const COLUMN: &'static str;
    /// Every value, to parse by.
    const ALL: &'static [Self];

    /// The stored code.
    fn code(self) -> &'static str;

    /// The value of a stored code.
    fn parse(code: &str) -> Result<Self, Error> {
        Self::ALL
            .iter()
            .copied()
            .find(|value| value.code() == code)
            .ok_or_else(|| {
                Error::Database(sqlx::Error::Decode(
                    format!("{} holds unknown value `{code}`", Self::COLUMN).into(),
                ))
            })
    }
}

impl Code for AssessmentKind {
    const COLUMN: &'static str = "assessments.kind";
    const ALL: &'static [Self] = &[
        Self::Certification,
        Self::CompetenceEvaluation,
        Self::Campaign,
        Self::Demo,
        Self::Preview,
    ];
    fn code(self) -> &'static str {
        match self {
            Self::Certification => "Certification",
            Self::CompetenceEvaluation => "CompetenceEvaluation",
            Self::Campaign => "Campaign",
            Self::Demo => "Demo",
            Self::Preview => "Preview",
        }
    }
}

impl Code for AssessmentState {
    const COLUMN: &'static str = "assessments.state";
    const ALL: &'static [Self] = &[
        Self::Started,
        Self::Completed,
        Self::Aborted,
        Self::EndedBySupervisor,
        Self::EndedDueToFinalization,
    ];
    fn code(self) -> &'static str {
        match self {
            Self::Started => "Started",
            Self::Completed => "Completed",
            Self::Aborted => "Aborted",
            Self::EndedBySupervisor => "EndedBySupervisor",
            Self::EndedDueToFinalization => "EndedDueToFinalization",
        }
    }
}

impl Code for ParticipationStatus {
    const COLUMN: &'static str = "campaign_participations.status";
    const ALL: &'static [Self] = &[Self::Started, Self::ToShare, Self::Shared];
    fn code(self) -> &'static str {
        match self {
            Self::Started => "Started",
            Self::ToShare => "ToShare",
            Self::Shared => "Shared",
        }
    }
}

impl Code for ResultStatus {
    const COLUMN: &'static str = "assessment_results.status";
    const ALL: &'static [Self] = &[Self::Validated, Self::Rejected];
    fn code(self) -> &'static str {
        match self {
            Self::Validated => "validated",
            Self::Rejected => "rejected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Code + PartialEq + std::fmt::Debug>() {
        for value in T::ALL {
            assert_eq!(T::parse(value.code()).unwrap(), *value);
        }
        assert!(T::parse("Archived").is_err());
    }

    #[test]
    fn every_code_reads_back_as_its_value() {
        round_trips::<AssessmentKind>();
        round_trips::<AssessmentState>();
        round_trips::<ParticipationStatus>();
        round_trips::<ResultStatus>();
    }
}
