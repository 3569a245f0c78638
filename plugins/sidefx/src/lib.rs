//! Test-only: makes the side effects outside the database that its order's `custom` asks
//! for, and fails the call with the host's error when the host refuses one, so a test sees
//! the refusal as a rolled-back payment or refund (and the backend receiving nothing):
//!
//! ```json
//! {"paid": "http" | "task" | "crypto" | "task-write" | "none", "refunded": "http" | "none",
//!  "note": "any text"}
//! ```
//!
//! * `http`: POSTs `{"out_trade_no", "from": "handle-paid" | "handle-refunded"}` to the
//!   manifest's `config.backend_url` from the handler itself; the outcome is `{"status"}`.
//! * `task`: enqueues task `post`, whose `run_task` makes the same POST (`"from": "run-task"`).
//! * `crypto`: signs `out_trade_no` with the account's notify key; the outcome is `{"sig"}`.
//! * `task-write`: sets `sidefx/{out_trade_no}` to `{"note", "stage": "paid"}` and enqueues
//!   task `write`, whose `run_task` merges `{"stage": "task"}` into it: database writes in
//!   a task run, for the write audit's tests (grant `collections = ["sidefx"]`).

use paynotify_plugin_sdk::{
    config, crypto, db, export_handler, http, tasks, Error, Handler, Notification, Order, Outcome,
    Refund, RefundHandler, Task,
};
use serde::Deserialize;
use serde_json::json;

/// What the order asks for.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Custom {
    paid: String,
    refunded: String,
    note: String,
}

/// POSTs the order number to the backend; any status but 2xx is an error.
fn post(out_trade_no: &str, from: &str) -> Result<u16, Error> {
    let url = config::require("backend_url")?;
    let res = http::post_json(&url, &json!({ "out_trade_no": out_trade_no, "from": from }))?;
    if !res.is_success() {
        return Err(Error::new(
            "backend-http",
            format!("backend answered HTTP {}", res.status),
        ));
    }
    Ok(res.status)
}

struct SideFx;

impl Handler for SideFx {
    const NAME: &'static str = "sidefx";

    fn handle_paid(order: Order, _notification: Notification) -> Result<Outcome, Error> {
        let custom: Custom = order.custom()?;
        match custom.paid.as_str() {
            "http" => Ok(json!({ "status": post(&order.out_trade_no, "handle-paid")? }).into()),
            "task" => {
                let id = tasks::enqueue("post", &json!({ "out_trade_no": order.out_trade_no }), 0)?;
                Ok(json!({ "task_id": id }).into())
            }
            "crypto" => Ok(json!({ "sig": crypto::sign(order.out_trade_no.as_bytes())? }).into()),
            "task-write" => {
                db::collection("sidefx")
                    .doc(&order.out_trade_no)
                    .set(&json!({ "note": custom.note, "stage": "paid" }))?;
                let id =
                    tasks::enqueue("write", &json!({ "out_trade_no": order.out_trade_no }), 0)?;
                Ok(json!({ "task_id": id }).into())
            }
            "" | "none" => Ok(Outcome::none()),
            other => Err(Error::new(
                "invalid-custom",
                format!("unknown paid action `{other}`"),
            )),
        }
    }

    fn run_task(task: Task) -> Result<(), Error> {
        #[derive(Deserialize)]
        struct Payload {
            out_trade_no: String,
        }
        match task.name.as_str() {
            "post" => {
                let payload: Payload = task.payload()?;
                post(&payload.out_trade_no, "run-task").map(|_| ())
            }
            "write" => {
                let payload: Payload = task.payload()?;
                db::collection("sidefx")
                    .doc(&payload.out_trade_no)
                    .merge(&json!({ "stage": "task" }))?;
                Ok(())
            }
            other => Err(Error::new("unknown-task", format!("unknown task {other}"))),
        }
    }
}

impl RefundHandler for SideFx {
    fn handle_refunded(order: Order, _refund: Refund) -> Result<Outcome, Error> {
        let custom: Custom = order.custom()?;
        match custom.refunded.as_str() {
            "http" => Ok(json!({ "status": post(&order.out_trade_no, "handle-refunded")? }).into()),
            "" | "none" => Ok(Outcome::none()),
            other => Err(Error::new(
                "invalid-custom",
                format!("unknown refunded action `{other}`"),
            )),
        }
    }
}

export_handler!(SideFx, refunds);
