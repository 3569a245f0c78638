//! `goods`: a shop order.
//!
//! The order is created with `custom = {"goods_id": "g1", "quantity": 2}` (`quantity`
//! defaults to 1). When it is paid, in the payment transaction:
//!
//! 1. `goods/{goods_id}.stock` goes down by `quantity`;
//! 2. `goods_orders/{out_trade_no}` records the fulfilled order;
//! 3. a `send-message` task is queued: the message goes out after the payment commits
//!    (the seed's advice: messages, commissions and the like asynchronously).
//!
//! A paid order is never refused for low stock: the money is already taken, so the order is
//! recorded, the outcome says `"stock_short": true` and a warning is logged for a human.

use paynotify_plugin_sdk::{
    db, export_handler, log, tasks, Error, Handler, Notification, Order, Outcome, Task,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The order's `custom` JSON.
#[derive(Debug, Deserialize, PartialEq)]
struct Custom {
    goods_id: String,
    #[serde(default = "one")]
    quantity: i64,
}

fn one() -> i64 {
    1
}

/// Payload of the `send-message` task.
#[derive(Debug, Serialize, Deserialize)]
struct SendMessage {
    out_trade_no: String,
    user_id: String,
    goods_id: String,
}

/// Reads and checks what was bought.
fn parse_custom(order: &Order) -> Result<Custom, Error> {
    let custom: Custom = order.custom()?;
    if custom.goods_id.is_empty() {
        return Err(Error::new(
            "invalid-custom",
            format!("order {}: goods_id must not be empty", order.out_trade_no),
        ));
    }
    if custom.quantity < 1 {
        return Err(Error::new(
            "invalid-custom",
            format!(
                "order {}: quantity must be at least 1, got {}",
                order.out_trade_no, custom.quantity
            ),
        ));
    }
    Ok(custom)
}

struct Goods;

impl Handler for Goods {
    const NAME: &'static str = "goods";

    fn handle_paid(order: Order, _notification: Notification) -> Result<Outcome, Error> {
        let Custom { goods_id, quantity } = parse_custom(&order)?;

        let stock = db::collection("goods")
            .doc(&goods_id)
            .inc("stock", -quantity)?;
        let stock_short = stock < 0;
        if stock_short {
            log::with(
                log::Level::Warn,
                "paid order exceeds stock; fulfil it by hand",
                &[
                    ("goods_id", &goods_id),
                    ("quantity", &quantity.to_string()),
                    ("stock", &stock.to_string()),
                ],
            );
        }

        db::collection("goods_orders")
            .doc(&order.out_trade_no)
            .set(&json!({
                "status": "fulfilled",
                "goods_id": goods_id,
                "quantity": quantity,
                "user_id": order.user_id,
                "transaction_id": order.transaction_id,
                "total_fee": order.total_fee,
            }))?;

        let message = SendMessage {
            out_trade_no: order.out_trade_no,
            user_id: order.user_id,
            goods_id: goods_id.clone(),
        };
        let task_id = tasks::enqueue("send-message", &message, 0)?;

        Ok(json!({
            "goods_id": goods_id,
            "quantity": quantity,
            "stock": stock,
            "stock_short": stock_short,
            "message_task": task_id,
        })
        .into())
    }

    fn run_task(task: Task) -> Result<(), Error> {
        match task.name.as_str() {
            "send-message" => {
                let message: SendMessage = task.payload()?;
                // The real message (WeChat subscription message, SMS, ...) is sent here; an
                // `Err` makes the host retry it later.
                log::with(
                    log::Level::Info,
                    "send-message: would notify the buyer",
                    &[
                        ("out_trade_no", &message.out_trade_no),
                        ("user_id", &message.user_id),
                        ("goods_id", &message.goods_id),
                        ("attempt", &task.attempt.to_string()),
                    ],
                );
                Ok(())
            }
            other => Err(Error::new("unknown-task", format!("unknown task {other}"))),
        }
    }
}

export_handler!(Goods);

#[cfg(test)]
mod tests {
    use super::*;

    fn order(custom: &str) -> Order {
        Order {
            out_trade_no: "G1".into(),
            order_type: "goods".into(),
            provider: "wechat-v2".into(),
            account: "main".into(),
            total_fee: 1990,
            user_id: "u1".into(),
            custom: custom.into(),
            transaction_id: "tx1".into(),
        }
    }

    #[test]
    fn quantity_defaults_to_one() {
        let c = parse_custom(&order(r#"{"goods_id":"g1"}"#)).unwrap();
        assert_eq!(
            c,
            Custom {
                goods_id: "g1".into(),
                quantity: 1
            }
        );
        let c = parse_custom(&order(r#"{"goods_id":"g1","quantity":3}"#)).unwrap();
        assert_eq!(c.quantity, 3);
    }

    #[test]
    fn rejects_bad_custom() {
        for bad in [
            "",
            "{}",
            r#"{"goods_id":""}"#,
            r#"{"goods_id":7}"#,
            r#"{"goods_id":"g1","quantity":0}"#,
            r#"{"goods_id":"g1","quantity":-2}"#,
            r#"{"goods_id":"g1","quantity":1.5}"#,
        ] {
            let err = parse_custom(&order(bad)).unwrap_err();
            assert_eq!(err.code(), "invalid-custom", "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_task_is_an_error() {
        let task = Task {
            id: 1,
            name: "nope".into(),
            payload: "{}".into(),
            attempt: 1,
            out_trade_no: None,
        };
        assert_eq!(Goods::run_task(task).unwrap_err().code(), "unknown-task");
    }

    #[test]
    fn bad_send_message_payload_is_an_error() {
        let task = Task {
            id: 1,
            name: "send-message".into(),
            payload: r#"{"out_trade_no":"G1"}"#.into(),
            attempt: 1,
            out_trade_no: Some("G1".into()),
        };
        assert_eq!(Goods::run_task(task).unwrap_err().code(), "invalid-payload");
    }
}
