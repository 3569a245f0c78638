//! `recharge-double` (test-only): a `recharge` build that credits TWICE the order's
//! `custom.recharge_balance`.
//!
//! It reports itself as `recharge` (version `1.1.0-double`), so it can be staged as
//! `recharge.next.wasm` beside the serving `recharge.wasm`: a candidate whose writes
//! differ from the serving build's on every payment, for the staging, promote, rollback
//! and shadow-run tests. Its refunds take back the refunded share of what it credited
//! (twice the refunded share of the order), as `recharge` does for its own credit.

use paynotify_plugin_sdk::{
    db, export_handler, log, Error, Handler, Notification, Order, Outcome, Refund, RefundHandler,
};
use serde::Deserialize;
use serde_json::json;

/// The order's `custom` JSON.
#[derive(Debug, Deserialize)]
struct Custom {
    /// Fen the order buys; this build credits twice as much. An integer >= 0.
    recharge_balance: i64,
}

/// What this build credits for `order`: twice its `recharge_balance`.
fn credit(order: &Order) -> Result<i64, Error> {
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
    custom.recharge_balance.checked_mul(2).ok_or_else(|| {
        Error::new(
            "invalid-custom",
            format!(
                "order {}: twice recharge_balance {} is out of range",
                order.out_trade_no, custom.recharge_balance
            ),
        )
    })
}

struct RechargeDouble;

impl Handler for RechargeDouble {
    const NAME: &'static str = "recharge";
    const VERSION: &'static str = "1.1.0-double";

    fn handle_paid(order: Order, _notification: Notification) -> Result<Outcome, Error> {
        let amount = credit(&order)?;
        let balance = db::collection("users")
            .doc(&order.user_id)
            .inc("balance", amount)?;
        log::info(format!(
            "credited {amount} fen (double) to user {}; balance now {balance}",
            order.user_id
        ));
        Ok(json!({ "balance": balance }).into())
    }
}

impl RefundHandler for RechargeDouble {
    fn handle_refunded(order: Order, refund: Refund) -> Result<Outcome, Error> {
        let credited = credit(&order)?;
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

/// The credit a refund takes back: the refunded share of what the payment credited,
/// computed on the running totals so an order's refunds together take back exactly what
/// it credited.
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

export_handler!(RechargeDouble, refunds);

#[cfg(test)]
mod tests {
    use super::*;

    fn order(custom: &str) -> Order {
        Order {
            out_trade_no: "R1".into(),
            order_type: "recharge".into(),
            provider: "wechat-v2".into(),
            account: "default".into(),
            total_fee: 500,
            user_id: "u1".into(),
            custom: custom.into(),
            transaction_id: "tx1".into(),
        }
    }

    #[test]
    fn credits_twice_the_balance() {
        assert_eq!(credit(&order(r#"{"recharge_balance":500}"#)), Ok(1000));
        assert_eq!(credit(&order(r#"{"recharge_balance":0}"#)), Ok(0));
    }

    #[test]
    fn rejects_what_recharge_rejects_and_overflow() {
        for custom in ["{}", r#"{"recharge_balance":-1}"#, "not json"] {
            assert_eq!(credit(&order(custom)).unwrap_err().code(), "invalid-custom");
        }
        let huge = format!(r#"{{"recharge_balance":{}}}"#, i64::MAX);
        assert_eq!(credit(&order(&huge)).unwrap_err().code(), "invalid-custom");
    }

    #[test]
    fn refunds_take_back_twice_the_refunded_share() {
        assert_eq!(refund_debit(1000, 500, 200, 200), Ok(400));
        let parts = [
            refund_debit(1000, 500, 100, 100).unwrap(),
            refund_debit(1000, 500, 500, 400).unwrap(),
        ];
        assert_eq!(parts.iter().sum::<i64>(), 1000);
    }
}
