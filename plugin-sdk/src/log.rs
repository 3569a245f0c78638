//! Structured logging through the host, which tags every line with the plugin, its version,
//! the order and the notification.
//!
//! ```no_run
//! use paynotify_plugin_sdk::log;
//!
//! log::info("recharging");
//! log::warn(format!("stock of {} is short by {}", "g1", 2));
//! log::with(log::Level::Info, "credited", &[("user_id", "u1"), ("fen", "500")]);
//! ```
//!
//! These calls reach the host, so they only work inside a component; natively (in unit
//! tests) they panic.

use crate::bindings::paynotify::plugin::log as raw;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unusual that did not stop the handler.
    Warn,
    /// Something failed.
    Error,
}

impl From<Level> for raw::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => raw::Level::Trace,
            Level::Debug => raw::Level::Debug,
            Level::Info => raw::Level::Info,
            Level::Warn => raw::Level::Warn,
            Level::Error => raw::Level::Error,
        }
    }
}

/// Logs `message` at `level` with extra `key = value` fields.
pub fn with(level: Level, message: impl AsRef<str>, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    raw::log(level.into(), message.as_ref(), &fields);
}

/// Logs `message` at [`Level::Trace`].
pub fn trace(message: impl AsRef<str>) {
    with(Level::Trace, message, &[]);
}

/// Logs `message` at [`Level::Debug`].
pub fn debug(message: impl AsRef<str>) {
    with(Level::Debug, message, &[]);
}

/// Logs `message` at [`Level::Info`].
pub fn info(message: impl AsRef<str>) {
    with(Level::Info, message, &[]);
}

/// Logs `message` at [`Level::Warn`].
pub fn warn(message: impl AsRef<str>) {
    with(Level::Warn, message, &[]);
}

/// Logs `message` at [`Level::Error`].
pub fn error(message: impl AsRef<str>) {
    with(Level::Error, message, &[]);
}
