//! `recharge`: a balance top-up.
//!
//! The order is created with `custom = {"recharge_balance": 500}` (fen). When it is paid,
//! `users/{user_id}.balance` grows by that much (the document is created if absent), in the
//! same transaction that marks the order paid. vk-uni-pay's
//! `db.collection("users").doc(user_id).update({ balance: _.inc(recharge_balance) })`.

use paynotify_plugin_sdk::{db, export_handler, log, Error, Handler, Notification, Order, Outcome};
use serde::Deserialize;
use serde_json::json;

/// The order's `custom` JSON.
#[derive(Debug, Deserialize)]
struct Custom {
    /// Fen to add to the balance. Must be an integer >= 0.
    recharge_balance: i64,
}

/// Reads and checks the amount to credit.
fn recharge_amount(order: &Order) -> Result<i64, Error> {
    let custom: Custom = order.custom()?;
    if custom.recharge_balance < 0 {
        return Err(Error::new(
            "invalid-custom",
            format!(
                "order {}: recharge_balance must not be negative, got {}",
                order.out_trade_no, custom.recharge_balance
            ),
        ));
    }
    if order.user_id.is_empty() {
        return Err(Error::new(
            "invalid-order",
            format!("order {} has no user_id", order.out_trade_no),
        ));
    }
    Ok(custom.recharge_balance)
}

struct Recharge;

impl Handler for Recharge {
    const NAME: &'static str = "recharge";

    fn handle_paid(order: Order, _notification: Notification) -> Result<Outcome, Error> {
        let amount = recharge_amount(&order)?;
        let balance = db::collection("users")
            .doc(&order.user_id)
            .inc("balance", amount)?;
        log::info(format!(
            "credited {amount} fen to user {}; balance now {balance}",
            order.user_id
        ));
        Ok(json!({ "balance": balance }).into())
    }
}

export_handler!(Recharge);

#[cfg(test)]
mod tests {
    use super::*;

    fn order(custom: &str) -> Order {
        Order {
            out_trade_no: "R1".into(),
            order_type: "recharge".into(),
            provider: "wechat-v3".into(),
            account: "main".into(),
            total_fee: 500,
            user_id: "u1".into(),
            custom: custom.into(),
            transaction_id: "tx1".into(),
        }
    }

    #[test]
    fn accepts_a_non_negative_integer() {
        assert_eq!(
            recharge_amount(&order(r#"{"recharge_balance":500}"#)),
            Ok(500)
        );
        assert_eq!(recharge_amount(&order(r#"{"recharge_balance":0}"#)), Ok(0));
    }

    #[test]
    fn rejects_missing_negative_and_non_integer() {
        for custom in [
            "",
            "{}",
            r#"{"recharge_balance":-1}"#,
            r#"{"recharge_balance":1.5}"#,
            r#"{"recharge_balance":"500"}"#,
            r#"{"recharge_balance":null}"#,
            "not json",
        ] {
            let err = recharge_amount(&order(custom)).unwrap_err();
            assert_eq!(err.code(), "invalid-custom", "{custom}: {err}");
        }
        let err = recharge_amount(&order("{}")).unwrap_err();
        assert!(err.message().contains("recharge_balance"), "{err}");
    }

    #[test]
    fn rejects_an_order_without_user() {
        let mut o = order(r#"{"recharge_balance":1}"#);
        o.user_id.clear();
        assert_eq!(recharge_amount(&o).unwrap_err().code(), "invalid-order");
    }
}
