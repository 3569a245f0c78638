//! `orders pay-params`, `orders refund` and `orders close`: the payment loop from the
//! command line, through the running server's API (the server holds the merchant keys
//! and settles what comes back), printed for people or as JSON.

use serde_json::{json, Value};

use super::admin::AdminClient;
use super::args::OrdersCommand;
use paynotify::config::Config;

/// Runs `pay-params`, `refund` or `close`.
pub async fn run(config: &Config, json: bool, c: &OrdersCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(config);
    let (value, text): (anyhow::Result<Value>, fn(&Value) -> String) = match c {
        OrdersCommand::PayParams {
            out_trade_no,
            method,
            openid,
            sub_openid,
            client_ip,
            description,
            return_url,
        } => {
            let body = match method {
                Some(m) => json!({ "pay": {
                    "method": m, "openid": openid, "sub_openid": sub_openid,
                    "client_ip": client_ip, "description": description, "return_url": return_url,
                }}),
                None => json!({}),
            };
            let path = format!("/api/orders/{}/pay", segment(out_trade_no));
            (client.post_json(&path, &strip_nulls(body)).await, pay_text)
        }
        OrdersCommand::Refund {
            out_trade_no,
            amount,
            out_refund_no,
            reason,
        } => {
            let body =
                json!({ "amount": amount, "out_refund_no": out_refund_no, "reason": reason });
            let path = format!("/api/orders/{}/refunds", segment(out_trade_no));
            (
                client.post_json(&path, &strip_nulls(body)).await,
                refund_text,
            )
        }
        OrdersCommand::Close { out_trade_no } => {
            let path = format!("/api/orders/{}/close", segment(out_trade_no));
            (client.post(&path).await, close_text)
        }
        OrdersCommand::Show { .. } | OrdersCommand::List { .. } => {
            anyhow::bail!("`orders show` and `orders list` read the database, not the server")
        }
        OrdersCommand::Writes { .. } => anyhow::bail!("`orders writes` is cli::audit's"),
    };
    let v = value?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{}", text(&v));
    }
    Ok(())
}

/// An order number as a path segment (they are plain, but a `/` must not change the path).
pub(super) fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The object without its `null` members (absent options are not sent).
fn strip_nulls(mut v: Value) -> Value {
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, x| !x.is_null());
        for x in map.values_mut() {
            *x = strip_nulls(x.take());
        }
    }
    v
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `payment` as `key  value` lines, in the provider's order.
fn pay_text(v: &Value) -> String {
    let mut out = format!(
        "payment parameters of order {}:\n",
        text_of(&v["out_trade_no"])
    );
    if let Some(map) = v["payment"].as_object() {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (k, x) in map {
            out.push_str(&format!("  {k:width$}  {}\n", text_of(x)));
        }
    }
    out
}

fn refund_text(v: &Value) -> String {
    let mut out = format!(
        "refund {} of order {}: {} fen, {}{}\n",
        text_of(&v["out_refund_no"]),
        text_of(&v["out_trade_no"]),
        text_of(&v["amount"]),
        text_of(&v["state"]),
        if v["created"] == json!(false) {
            " (asked before with this refund number)"
        } else {
            ""
        }
    );
    if let Some(e) = v["error"].as_str() {
        out.push_str(&format!("  note: {e}\n"));
    }
    out.push_str(match v["state"].as_str() {
        Some("accepted") => "  the provider took it; its refund notification settles it\n",
        Some("settled") => "  applied to the order\n",
        _ => "",
    });
    out
}

fn close_text(v: &Value) -> String {
    let mut out = format!(
        "order {} closed{}\n",
        text_of(&v["out_trade_no"]),
        if v["already_closed"] == json!(true) {
            " (it already was)"
        } else if v["closed_at_provider"] == json!(true) {
            " at the provider and here"
        } else {
            " here"
        }
    );
    if let Some(n) = v["note"].as_str() {
        out.push_str(&format!("  note: {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_options_are_not_sent() {
        let v = strip_nulls(json!({ "pay": { "method": "native", "openid": null }, "x": null }));
        assert_eq!(v, json!({ "pay": { "method": "native" } }));
    }

    #[test]
    fn answers_read_for_people() {
        let t = pay_text(&json!({ "out_trade_no": "N1", "payment": { "code_url": "weixin://x" } }));
        assert!(
            t.contains("order N1") && t.contains("code_url  weixin://x"),
            "{t}"
        );
        let t = refund_text(
            &json!({ "out_refund_no": "R1", "out_trade_no": "N1", "amount": 5, "state": "accepted", "created": true }),
        );
        assert!(t.contains("refund R1 of order N1: 5 fen, accepted"), "{t}");
        let t = close_text(
            &json!({ "out_trade_no": "N1", "closed_at_provider": true, "already_closed": false }),
        );
        assert_eq!(t, "order N1 closed at the provider and here\n");
    }
}
