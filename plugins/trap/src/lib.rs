//! Test-only: writes to `users/{user_id}`, then panics, which aborts the component (a wasm
//! trap). The host must survive, roll the writes back with the payment, and keep serving.

use paynotify_plugin_sdk::{db, export_handler, Error, Handler, Notification, Order, Outcome};
use serde_json::json;

struct Trap;

impl Handler for Trap {
    const NAME: &'static str = "trap";

    fn handle_paid(order: Order, _notification: Notification) -> Result<Outcome, Error> {
        let user = db::collection("users").doc(&order.user_id);
        user.inc("balance", 1)?;
        user.merge(&json!({ "touched_by_trap": true }))?;
        panic!("trap plugin: deliberate panic");
    }
}

export_handler!(Trap);
