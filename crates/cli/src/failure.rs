//! Why a command failed, with its exit code, printed on one line without secrets.

use std::process::ExitCode;

/// A failed command: its message and exit code (see the crate documentation).
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// The command could not do its work (exit code 1).
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// The command line is wrong or a bulk action was not confirmed (exit code 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// Nothing matched (exit code 3).
    pub(crate) fn nothing(message: impl Into<String>) -> Self {
        Failure {
            code: 3,
            message: message.into(),
        }
    }

    /// A database error while doing `what`.
    pub(crate) fn database(what: &str) -> impl FnOnce(keel::Error) -> Failure + '_ {
        move |error| Failure::failed(format!("cannot {what}: {error}"))
    }

    /// Prints the message on one line to standard error, the password of `url` (if any)
    /// masked wherever it appears, and gives the exit code.
    pub(crate) fn report(self, url: Option<&str>) -> ExitCode {
        let mut message = self.message.replace(['\n', '\r'], " ");
        if let Some(password) = url.and_then(password_of) {
            message = message.replace(&password, "***");
        }
        eprintln!("error: {message}");
        ExitCode::from(self.code)
    }
}

/// The password in a database URL, if it has one (in the user part or as a parameter).
pub(crate) fn password_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let password = parsed.password().map(str::to_owned).or_else(|| {
        parsed
            .query_pairs()
            .find(|(key, _)| key.eq_ignore_ascii_case("password"))
            .map(|(_, value)| value.into_owned())
    })?;
    (!password.is_empty()).then_some(password)
}
