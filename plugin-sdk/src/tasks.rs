//! The transactional outbox: work that must happen after the payment commits.
//!
//! A task enqueued in [`Handler::handle_paid`](crate::Handler::handle_paid) exists only if
//! the payment commits. The host then calls
//! [`Handler::run_task`](crate::Handler::run_task) with it, retrying with backoff while it
//! returns an error and parking it as dead after too many attempts. Put HTTP calls,
//! messages and commissions here (the seed's "task-queue table processed by a timer").
//!
//! ```no_run
//! use paynotify_plugin_sdk::tasks;
//!
//! # fn demo() -> Result<(), paynotify_plugin_sdk::Error> {
//! let id = tasks::enqueue("send-message", &serde_json::json!({ "user_id": "u1" }), 0)?;
//! # Ok(()) }
//! ```

use serde::Serialize;

use crate::bindings::paynotify::plugin::tasks as raw;
use crate::Error;

/// Queues `run-task` with this `name` and JSON `payload`, to run no sooner than `delay_secs`
/// seconds after the payment commits. Returns the task id.
///
/// Errors have code `invalid-json` (the payload does not serialise) or `task-enqueue` (the
/// host refused).
pub fn enqueue<T: Serialize + ?Sized>(
    name: &str,
    payload: &T,
    delay_secs: u32,
) -> Result<i64, Error> {
    let payload = serde_json::to_string(payload)?;
    raw::enqueue(name, &payload, delay_secs)
        .map_err(|m| Error::new("task-enqueue", format!("task {name}: {m}")))
}
