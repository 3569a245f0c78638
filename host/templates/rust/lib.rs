//! `{{name}}`: the paynotify handler for orders of type `{{name}}`.
//!
//! When such an order is paid, this adds `custom.points` to `users/{user_id}.points`,
//! records the order in `{{collection}}`, and queues a `notify-user` task that runs
//! after the payment commits. Replace it with your own logic.

use paynotify_plugin_sdk::{
    db, export_handler, log, tasks, Error, Handler, Notification, Order, Outcome, Task,
};
use serde::Deserialize;
use serde_json::json;

/// The order's `custom` JSON, as the merchant created it: `{"points": 10}`.
#[derive(Debug, Default, Deserialize)]
struct Custom {
    /// Points to credit; absent = 0.
    #[serde(default)]
    points: i64,
}

struct {{type_name}};

impl Handler for {{type_name}} {
    const NAME: &'static str = "{{name}}";

    /// Runs inside the payment transaction: every write below commits with the payment or
    /// not at all. Return `Err` only when a retry can help or the order is malformed.
    fn handle_paid(order: Order, notification: Notification) -> Result<Outcome, Error> {
        let custom: Custom = order.custom()?;
        if order.user_id.is_empty() {
            return Err(Error::new(
                "invalid-order",
                format!("order {} has no user_id", order.out_trade_no),
            ));
        }
        let points = db::collection("users")
            .doc(&order.user_id)
            .inc("points", custom.points)?;
        db::collection("{{collection}}").doc(&order.out_trade_no).set(&json!({
            "user_id": order.user_id,
            "total_fee": order.total_fee,
            "transaction_id": notification.transaction_id,
        }))?;
        // Side effects outside the database go in a task: it exists only if the payment
        // commits, and is retried until `run_task` returns Ok.
        tasks::enqueue(
            "notify-user",
            &json!({ "user_id": order.user_id, "out_trade_no": order.out_trade_no }),
            0,
        )?;
        log::info(format!(
            "order {} paid: user {} now has {points} points",
            order.out_trade_no, order.user_id
        ));
        Ok(json!({ "points": points }).into())
    }

    fn run_task(task: Task) -> Result<(), Error> {
        match task.name.as_str() {
            "notify-user" => {
                #[derive(Deserialize)]
                struct Payload {
                    user_id: String,
                    out_trade_no: String,
                }
                let p: Payload = task.payload()?;
                // A real handler would call the merchant's backend here with `http`.
                log::info(format!("would notify {} about {}", p.user_id, p.out_trade_no));
                Ok(())
            }
            other => Err(Error::new("unknown-task", format!("unknown task {other}"))),
        }
    }
}

export_handler!({{type_name}});
