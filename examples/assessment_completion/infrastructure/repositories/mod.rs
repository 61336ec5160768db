//! One module per aggregate; every function takes the unit of work's `&mut Tx`.

pub mod assessments;
pub mod campaign_participations;
pub mod certification_courses;
