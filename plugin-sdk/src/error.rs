use std::fmt;

use crate::bindings;
use crate::crypto::CryptoError;
use crate::db::DbError;
use crate::http::HttpError;

/// A handler failure: a short machine-readable `code` and a human-readable `message`.
///
/// Returned from [`Handler::handle_paid`](crate::Handler::handle_paid) it rolls the payment
/// transaction back (the provider retries); from
/// [`Handler::run_task`](crate::Handler::run_task) it makes the host retry the task later.
/// The host logs and stores both parts.
///
/// Every capability error converts into it, so `?` works throughout a handler:
///
/// | source | code |
/// |---|---|
/// | [`Error::msg`] | `handler-error` |
/// | [`DbError`] | `db-denied`, `db-invalid`, `db-conflict`, `db-not-a-number`, `db-backend` |
/// | [`HttpError`] | `http-denied`, `http-invalid-request`, `http-timeout`, `http-too-large`, `http-transport` |
/// | [`CryptoError`] | `crypto-denied`, `crypto-no-key`, `crypto-invalid` |
/// | [`serde_json::Error`] | `invalid-json` |
/// | [`Order::custom`](crate::Order::custom) | `invalid-custom` |
/// | [`Task::payload`](crate::Task::payload) | `invalid-payload` |
/// | [`http::Response::json`](crate::http::Response::json) | `invalid-response` |
/// | [`tasks::enqueue`](crate::tasks::enqueue) | `task-enqueue` |
/// | default [`Handler::run_task`](crate::Handler::run_task) | `unknown-task` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: String,
    message: String,
}

impl Error {
    /// An error with an explicit code, e.g. `Error::new("backend-rejected", "code 3: no such user")`.
    /// Keep codes short, lowercase and dash-separated: ops search logs for them.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            code: code.into(),
            message: message.into(),
        }
    }

    /// An error with the generic code `handler-error`.
    pub fn msg(message: impl Into<String>) -> Self {
        Error::new("handler-error", message)
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with `context: `, keeping the code.
    ///
    /// ```
    /// # use paynotify_plugin_sdk::Error;
    /// let e = Error::new("db-backend", "disk full").context("crediting the referrer");
    /// assert_eq!(e.message(), "crediting the referrer: disk full");
    /// ```
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub(crate) fn into_raw(self) -> bindings::Error {
        bindings::Error {
            code: self.code,
            message: self.message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        let code = match &e {
            DbError::Denied(_) => "db-denied",
            DbError::Invalid(_) => "db-invalid",
            DbError::Conflict(_) => "db-conflict",
            DbError::NotANumber(_) => "db-not-a-number",
            DbError::Backend(_) => "db-backend",
        };
        Error::new(code, e.to_string())
    }
}

impl From<HttpError> for Error {
    fn from(e: HttpError) -> Self {
        let code = match &e {
            HttpError::Denied(_) => "http-denied",
            HttpError::InvalidRequest(_) => "http-invalid-request",
            HttpError::Timeout => "http-timeout",
            HttpError::TooLarge => "http-too-large",
            HttpError::Transport(_) => "http-transport",
        };
        Error::new(code, e.to_string())
    }
}

impl From<CryptoError> for Error {
    fn from(e: CryptoError) -> Self {
        let code = match &e {
            CryptoError::Denied(_) => "crypto-denied",
            CryptoError::NoKey => "crypto-no-key",
            CryptoError::Invalid(_) => "crypto-invalid",
        };
        Error::new(code, e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::new("invalid-json", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_pick_codes() {
        let e: Error = DbError::Denied("collection secrets is not granted".into()).into();
        assert_eq!(e.code(), "db-denied");
        assert!(e.message().contains("secrets"), "{e}");
        let e: Error = HttpError::Timeout.into();
        assert_eq!(e.code(), "http-timeout");
        let e: Error = CryptoError::NoKey.into();
        assert_eq!(e.code(), "crypto-no-key");
        let e: Error = serde_json::from_str::<i64>("x").unwrap_err().into();
        assert_eq!(e.code(), "invalid-json");
        assert_eq!(Error::msg("boom").code(), "handler-error");
        assert_eq!(Error::new("a", "b").to_string(), "a: b");
    }
}
