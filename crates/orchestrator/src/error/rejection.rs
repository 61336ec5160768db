//! Rejections: an application's refusals (a domain rule), never retried.

use std::error::Error as StdError;

use super::Error;

/// Marks an application error type as a *rejection*: a domain rule that refused the
/// operation. Returning one from a unit of work rolls it back and is never retried.
///
/// With this marker, `?` turns the error into [`Error::Rejected`], and
/// [`Error::rejection`] gets it back, typed:
///
/// ```
/// # mod keel { pub use keel_orchestrator::{Error, Rejection}; }
/// use keel::{Error, Rejection};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("assessment {0} is already completed")]
/// struct AlreadyCompleted(i64);
/// impl Rejection for AlreadyCompleted {}
///
/// fn complete(id: i64) -> Result<(), Error> {
///     Err(AlreadyCompleted(id))?
/// }
///
/// let err = complete(7).unwrap_err();
/// assert!(!err.is_transient());
/// assert_eq!(err.rejection::<AlreadyCompleted>().unwrap().0, 7);
/// ```
pub trait Rejection: StdError + Send + Sync + 'static {}

impl<R: Rejection> From<R> for Error {
    fn from(rejection: R) -> Self {
        Error::Rejected(Box::new(rejection))
    }
}
