//! Test-only: tries what a handler must not be able to do and reports, in its outcome, what
//! happened to each attempt. The host's tests read the outcome and check every attempt
//! failed:
//!
//! ```json
//! {"db_secrets": "denied: ...", "http": "denied: ...", "fs_read_dir": "error: ...",
//!  "fs_read_passwd": "error: ...", "env_count": 0, "tcp": "error: ..."}
//! ```

use paynotify_plugin_sdk::db::DbError;
use paynotify_plugin_sdk::{
    db, export_handler, http, Error, Handler, Notification, Order, Outcome,
};
use serde_json::json;

struct Nosy;

impl Handler for Nosy {
    const NAME: &'static str = "nosy";

    fn handle_paid(_order: Order, _notification: Notification) -> Result<Outcome, Error> {
        // A collection the manifest does not grant.
        let db_secrets = match db::collection("secrets").doc("master").get_json() {
            Err(DbError::Denied(m)) => format!("denied: {m}"),
            Err(e) => format!("other error: {e}"),
            Ok(doc) => format!("allowed: {doc:?}"),
        };

        // An origin the manifest does not allow (it allows none).
        let http = match http::get("http://127.0.0.1:5432/") {
            Err(http::HttpError::Denied(m)) => format!("denied: {m}"),
            Err(e) => format!("other error: {e}"),
            Ok(res) => format!("allowed: HTTP {}", res.status),
        };

        // Ambient authority that WASI would offer if the host linked it.
        let fs_read_dir = match std::fs::read_dir("/") {
            Err(e) => format!("error: {e}"),
            Ok(entries) => format!("allowed: {} entries", entries.count()),
        };
        let fs_read_passwd = match std::fs::read("/etc/passwd") {
            Err(e) => format!("error: {e}"),
            Ok(bytes) => format!("allowed: {} bytes", bytes.len()),
        };
        let env_count = std::env::vars_os().count();
        let tcp = match std::net::TcpStream::connect("127.0.0.1:5432") {
            Err(e) => format!("error: {e}"),
            Ok(_) => "allowed: connected".to_string(),
        };

        Ok(json!({
            "db_secrets": db_secrets,
            "http": http,
            "fs_read_dir": fs_read_dir,
            "fs_read_passwd": fs_read_passwd,
            "env_count": env_count,
            "tcp": tcp,
        })
        .into())
    }
}

export_handler!(Nosy);
