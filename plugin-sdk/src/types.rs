use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{bindings, Error};

/// The order being paid, as the merchant created it (`POST /api/orders`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The merchant's order number; unique.
    pub out_trade_no: String,
    /// The order `type` (WIT field `type`): the handler's name, e.g. `recharge`.
    pub order_type: String,
    /// `wechat-v2`, `wechat-v3`, `alipay` or `cloudpay`.
    pub provider: String,
    /// Merchant account name from the host config.
    pub account: String,
    /// Amount in fen (cents). The host has already checked the notification paid exactly this.
    pub total_fee: i64,
    /// The user the order was created for.
    pub user_id: String,
    /// JSON text given when the order was created; read it with [`Order::custom`].
    pub custom: String,
    /// The provider's transaction id.
    pub transaction_id: String,
}

impl Order {
    /// Deserialises the order's `custom` JSON into `T`.
    ///
    /// An empty `custom` reads as JSON `null` (so `Option<T>` or a struct with all-default
    /// fields accepts it). A mismatch is an [`Error`] with code `invalid-custom` whose
    /// message names the order, the expected type and what serde found wrong.
    ///
    /// ```
    /// # use paynotify_plugin_sdk::Order;
    /// #[derive(serde::Deserialize)]
    /// struct Custom { months: u32 }
    ///
    /// # let order = Order { out_trade_no: "o1".into(), order_type: "vip".into(),
    /// #     provider: "alipay".into(), account: "main".into(), total_fee: 100,
    /// #     user_id: "u1".into(), custom: r#"{"months":3}"#.into(), transaction_id: "t1".into() };
    /// let custom: Custom = order.custom()?;
    /// assert_eq!(custom.months, 3);
    /// # Ok::<(), paynotify_plugin_sdk::Error>(())
    /// ```
    pub fn custom<T: DeserializeOwned>(&self) -> Result<T, Error> {
        parse_json_text(&self.custom).map_err(|e| {
            Error::new(
                "invalid-custom",
                format!(
                    "order {}: custom {} does not match {}: {e}",
                    self.out_trade_no,
                    snippet(&self.custom),
                    std::any::type_name::<T>(),
                ),
            )
        })
    }
}

impl From<bindings::Order> for Order {
    fn from(o: bindings::Order) -> Self {
        Order {
            out_trade_no: o.out_trade_no,
            order_type: o.type_,
            provider: o.provider,
            account: o.account,
            total_fee: o.total_fee,
            user_id: o.user_id,
            custom: o.custom,
            transaction_id: o.transaction_id,
        }
    }
}

/// The verified notification that paid the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Host-side id of the stored notification.
    pub id: i64,
    /// `wechat-v2`, `wechat-v3`, `alipay` or `cloudpay`.
    pub provider: String,
    /// Merchant account name from the host config.
    pub account: String,
    /// The merchant's order number.
    pub out_trade_no: String,
    /// The provider's transaction id.
    pub transaction_id: String,
    /// Amount the provider says was paid, in fen.
    pub amount: i64,
    /// RFC 3339 time the provider says it was paid, when it says.
    pub paid_at: Option<String>,
    /// Every verified field as received, with the provider's own names
    /// (`time_end`, `success_time`, `gmt_payment`, `outTradeNo`, ...).
    pub fields: Vec<(String, String)>,
}

impl Notification {
    /// The first verified field called `name` (exact, case-sensitive match).
    ///
    /// ```
    /// # use paynotify_plugin_sdk::Notification;
    /// # let n = Notification { id: 1, provider: "alipay".into(), account: "main".into(),
    /// #     out_trade_no: "o1".into(), transaction_id: "t1".into(), amount: 100, paid_at: None,
    /// #     fields: vec![("buyer_id".into(), "2088".into())] };
    /// assert_eq!(n.field("buyer_id"), Some("2088"));
    /// assert_eq!(n.field("nope"), None);
    /// ```
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl From<bindings::Notification> for Notification {
    fn from(n: bindings::Notification) -> Self {
        Notification {
            id: n.id,
            provider: n.provider,
            account: n.account,
            out_trade_no: n.out_trade_no,
            transaction_id: n.transaction_id,
            amount: n.amount,
            paid_at: n.paid_at,
            fields: n.fields,
        }
    }
}

/// A task this handler queued with [`tasks::enqueue`](crate::tasks::enqueue), delivered to
/// [`Handler::run_task`](crate::Handler::run_task) after the payment committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Host-side task id (what `enqueue` returned).
    pub id: i64,
    /// The name given to `enqueue`; dispatch on it.
    pub name: String,
    /// JSON text given to `enqueue`; read it with [`Task::payload`].
    pub payload: String,
    /// 1 on the first run, 2 on the first retry, ...
    pub attempt: u32,
    /// The order whose handler queued it, if any.
    pub out_trade_no: Option<String>,
}

impl Task {
    /// Deserialises the task's JSON payload into `T`. A mismatch is an [`Error`] with code
    /// `invalid-payload` naming the task and the expected type.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, Error> {
        parse_json_text(&self.payload).map_err(|e| {
            Error::new(
                "invalid-payload",
                format!(
                    "task {} ({}): payload {} does not match {}: {e}",
                    self.name,
                    self.id,
                    snippet(&self.payload),
                    std::any::type_name::<T>(),
                ),
            )
        })
    }
}

impl From<bindings::Task> for Task {
    fn from(t: bindings::Task) -> Self {
        Task {
            id: t.id,
            name: t.name,
            payload: t.payload,
            attempt: t.attempt,
            out_trade_no: t.out_trade_no,
        }
    }
}

/// What a successful [`Handler::handle_paid`](crate::Handler::handle_paid) reports; the
/// host stores it as the order's `handler_result` (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    json: String,
}

impl Outcome {
    /// No result (stored as JSON `null`).
    pub fn none() -> Self {
        Outcome::default()
    }

    /// `value` serialised as JSON. Fails (code `invalid-json`) only for values JSON cannot
    /// represent, such as maps with non-string keys.
    ///
    /// ```
    /// # use paynotify_plugin_sdk::Outcome;
    /// let outcome = Outcome::json(&serde_json::json!({ "balance": 1200 }))?;
    /// assert_eq!(outcome.as_json(), r#"{"balance":1200}"#);
    /// # Ok::<(), paynotify_plugin_sdk::Error>(())
    /// ```
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        Ok(Outcome {
            json: serde_json::to_string(value)?,
        })
    }

    /// The JSON text handed to the host; empty for [`Outcome::none`].
    pub fn as_json(&self) -> &str {
        &self.json
    }

    pub(crate) fn into_raw(self) -> bindings::Outcome {
        bindings::Outcome { result: self.json }
    }
}

impl From<serde_json::Value> for Outcome {
    /// Infallible: a `serde_json::Value` always serialises.
    fn from(value: serde_json::Value) -> Self {
        Outcome {
            json: value.to_string(),
        }
    }
}

/// Parses JSON text, reading empty (or all-whitespace) text as `null`.
pub(crate) fn parse_json_text<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    if text.trim().is_empty() {
        serde_json::from_str("null")
    } else {
        serde_json::from_str(text)
    }
}

/// `text` quoted for an error message, cut to a readable length.
pub(crate) fn snippet(text: &str) -> String {
    const MAX: usize = 200;
    if text.trim().is_empty() {
        return "(empty)".to_string();
    }
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("`{}`...", &text[..cut]),
        None => format!("`{text}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn order(custom: &str) -> Order {
        Order {
            out_trade_no: "T1".into(),
            order_type: "recharge".into(),
            provider: "alipay".into(),
            account: "main".into(),
            total_fee: 100,
            user_id: "u1".into(),
            custom: custom.into(),
            transaction_id: "tx".into(),
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Custom {
        recharge_balance: i64,
    }

    #[test]
    fn custom_parses() {
        let c: Custom = order(r#"{"recharge_balance": 500}"#).custom().unwrap();
        assert_eq!(
            c,
            Custom {
                recharge_balance: 500
            }
        );
    }

    #[test]
    fn custom_error_names_order_type_and_problem() {
        let e = order(r#"{"recharge_balance": "lots"}"#)
            .custom::<Custom>()
            .unwrap_err();
        assert_eq!(e.code(), "invalid-custom");
        let m = e.message();
        assert!(m.contains("order T1"), "{m}");
        assert!(m.contains("Custom"), "{m}");
        assert!(m.contains("invalid type"), "{m}");
        assert!(m.contains("lots"), "{m}");
    }

    #[test]
    fn empty_custom_is_null() {
        let c: Option<Custom> = order("").custom().unwrap();
        assert_eq!(c, None);
        let e = order("  ").custom::<Custom>().unwrap_err();
        assert!(e.message().contains("(empty)"), "{}", e.message());
    }

    #[test]
    fn long_custom_is_cut_in_messages() {
        let long = format!(r#"{{"x":"{}"}}"#, "é".repeat(500));
        let e = order(&long).custom::<Custom>().unwrap_err();
        assert!(e.message().len() < 700, "{}", e.message());
    }

    #[test]
    fn task_payload() {
        let t = Task {
            id: 3,
            name: "send-message".into(),
            payload: r#"{"recharge_balance":1}"#.into(),
            attempt: 1,
            out_trade_no: None,
        };
        assert_eq!(t.payload::<Custom>().unwrap().recharge_balance, 1);
        let e = t.payload::<Vec<u8>>().unwrap_err();
        assert_eq!(e.code(), "invalid-payload");
        assert!(e.message().contains("send-message"));
    }

    #[test]
    fn outcomes() {
        assert_eq!(Outcome::none().as_json(), "");
        let o: Outcome = serde_json::json!({"a": 1}).into();
        assert_eq!(o.as_json(), r#"{"a":1}"#);
        let mut bad = std::collections::HashMap::new();
        bad.insert((1, 2), 3);
        assert_eq!(Outcome::json(&bad).unwrap_err().code(), "invalid-json");
    }
}
