//! One module per aggregate; every function takes the unit of work's `&mut Tx`, so it can
//! only run inside a unit of work, on its connection.

pub mod answers;
pub mod assessments;
pub mod badges;
pub mod campaign_participations;
pub mod certification_courses;
pub mod results;
