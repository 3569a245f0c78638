//! `notify-backend`: hand the paid order to the merchant's own backend (vk-uni-pay's
//! "方式三", calling a Java/PHP system), safely.
//!
//! The HTTP call is not made inside the payment transaction: `handle_paid` only enqueues a
//! task, which commits with the payment (so there is a task exactly when the order is
//! paid). The host then runs `run_task` after commit and retries it with backoff until the
//! backend answers `{"code":0}`.
//!
//! What the backend receives (`POST backend_url`, JSON):
//!
//! ```text
//! {"encryptedData": base64(iv || AES-256-CBC(notify_key, PKCS#7, order JSON))}
//! X-Paynotify-Timestamp: <unix seconds>
//! X-Paynotify-Signature: v1=<hex HMAC-SHA256(notify_key, timestamp + "." + body)>
//! ```
//!
//! The backend checks the signature, decrypts, does its business idempotently (the same
//! order may arrive again after a timeout) and answers `{"code":0}`.

use paynotify_plugin_sdk::{
    config, crypto, export_handler, http, log, tasks, Error, Handler, Notification, Order, Outcome,
    Task,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The task's payload: the facts of the paid order the backend needs.
#[derive(Debug, Serialize, Deserialize)]
struct PaidOrder {
    out_trade_no: String,
    #[serde(rename = "type")]
    order_type: String,
    total_fee: i64,
    user_id: String,
    transaction_id: String,
    provider: String,
    custom: serde_json::Value,
}

/// What the backend answers.
#[derive(Debug, Deserialize)]
struct Reply {
    code: i64,
    #[serde(default)]
    msg: Option<String>,
}

struct NotifyBackend;

impl Handler for NotifyBackend {
    const NAME: &'static str = "notify-backend";

    fn handle_paid(order: Order, _notification: Notification) -> Result<Outcome, Error> {
        let custom = order.custom::<serde_json::Value>()?;
        let paid = PaidOrder {
            out_trade_no: order.out_trade_no,
            order_type: order.order_type,
            total_fee: order.total_fee,
            user_id: order.user_id,
            transaction_id: order.transaction_id,
            provider: order.provider,
            custom,
        };
        let task_id = tasks::enqueue("notify-backend", &paid, 0)?;
        Ok(json!({ "task_id": task_id }).into())
    }

    fn run_task(task: Task) -> Result<(), Error> {
        if task.name != "notify-backend" {
            return Err(Error::new(
                "unknown-task",
                format!("unknown task {}", task.name),
            ));
        }
        let paid: PaidOrder = task.payload()?;
        let url = config::require("backend_url")?;
        let body = json!({ "encryptedData": crypto::aes_encrypt_json(&paid)? }).to_string();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
            .to_string();
        let signature = crypto::sign(format!("{timestamp}.{body}").as_bytes())?;
        let response = http::Request::post(&url)
            .header("content-type", "application/json")
            .header("x-paynotify-timestamp", timestamp.as_str())
            .header("x-paynotify-signature", format!("v1={signature}"))
            .body(body)
            .timeout_ms(5000)
            .send()?;
        if !response.is_success() {
            return Err(Error::new(
                "backend-http",
                format!("backend answered HTTP {}", response.status),
            ));
        }
        let reply: Reply = response.json()?;
        if reply.code != 0 {
            return Err(Error::new(
                "backend-rejected",
                format!(
                    "backend answered code {}: {}",
                    reply.code,
                    reply.msg.unwrap_or_default()
                ),
            ));
        }
        log::info(format!(
            "order {} delivered to the backend (attempt {})",
            paid.out_trade_no, task.attempt
        ));
        Ok(())
    }
}

export_handler!(NotifyBackend);
