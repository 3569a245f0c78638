//! Test-only: writes to `users/{user_id}`, then always fails. The host must roll the writes
//! back together with the payment (the order stays unpaid, `balance` and
//! `touched_by_fail_always` never appear).

use paynotify_plugin_sdk::{
    db, export_handler, tasks, Error, Handler, Notification, Order, Outcome,
};
use serde_json::json;

struct FailAlways;

impl Handler for FailAlways {
    const NAME: &'static str = "fail-always";

    fn handle_paid(order: Order, _notification: Notification) -> Result<Outcome, Error> {
        let user = db::collection("users").doc(&order.user_id);
        user.inc("balance", 1)?;
        user.merge(&json!({ "touched_by_fail_always": true }))?;
        // The outbox rolls back with the payment: this task must never exist.
        tasks::enqueue("must-not-exist", &json!({ "order": order.out_trade_no }), 0)?;
        Err(Error::new("always-fails", "this handler always fails"))
    }
}

export_handler!(FailAlways);
