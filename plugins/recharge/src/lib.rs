//! `recharge`: a balance top-up.
//!
//! The order is created with `custom = {"recharge_balance": 500}` (fen). When it is paid,
//! `users/{user_id}.balance` grows by that much (the document is created if absent), in the
//! same transaction that marks the order paid. vk-uni-pay's
//! `db.collection("users").doc(user_id).update({ balance: _.inc(recharge_balance) })`.
//!
//! It also handles refunds (`export_handler!(Recharge, refunds)`): a refund takes back the
//! refunded share of the credit, in the refund's transaction.

use paynotify_plugin_sdk::{
    db, export_handler, log, Error, Handler, Notification, Order, Outcome, Refund, RefundHandler,
};
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

impl RefundHandler for Recharge {
    fn handle_refunded(order: Order, refund: Refund) -> Result<Outcome, Error> {
        let credited = recharge_amount(&order)?;
        let debit = refund_debit(
            credited,
            order.total_fee,
            refund.refunded_total,
            refund.amount,
        )?;
        let balance = db::collection("users")
            .doc(&order.user_id)
            .inc("balance", -debit)?;
        log::info(format!(
            "refund {} of {} fen: took {debit} fen back from user {}; balance now {balance}",
            refund.out_refund_no, refund.amount, order.user_id
        ));
        Ok(json!({ "debited": debit, "balance": balance }).into())
    }
}

/// The credit a refund takes back: the refunded share of what the payment credited.
/// Computed on the running totals, so the refunds of an order together take back exactly
/// what it credited (when `credited` equals the total paid, it is the refunded amount).
fn refund_debit(
    credited: i64,
    total_fee: i64,
    refunded_total: i64,
    amount: i64,
) -> Result<i64, Error> {
    if total_fee <= 0 || amount <= 0 || refunded_total < amount || refunded_total > total_fee {
        return Err(Error::new(
            "invalid-refund",
            format!("refund of {amount} fen (total {refunded_total}) does not fit an order of {total_fee} fen"),
        ));
    }
    let share = |refunded: i64| i128::from(credited) * i128::from(refunded) / i128::from(total_fee);
    i64::try_from(share(refunded_total) - share(refunded_total - amount))
        .map_err(|_| Error::new("invalid-refund", "refund share out of range"))
}

export_handler!(Recharge, refunds);

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
    fn refunds_take_back_the_refunded_share_exactly() {
        assert_eq!(refund_debit(500, 500, 200, 200), Ok(200));
        assert_eq!(refund_debit(500, 500, 500, 300), Ok(300));
        // 100 fen paid credited 120: three refunds take back 120 in all.
        let parts = [
            refund_debit(120, 100, 33, 33).unwrap(),
            refund_debit(120, 100, 66, 33).unwrap(),
            refund_debit(120, 100, 100, 34).unwrap(),
        ];
        assert_eq!(parts.iter().sum::<i64>(), 120);
        assert!(refund_debit(500, 500, 600, 600).is_err());
        assert!(refund_debit(500, 500, 100, 0).is_err());
    }

    #[test]
    fn rejects_an_order_without_user() {
        let mut o = order(r#"{"recharge_balance":1}"#);
        o.user_id.clear();
        assert_eq!(recharge_amount(&o).unwrap_err().code(), "invalid-order");
    }
}
