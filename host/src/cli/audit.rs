//! `orders writes`: what an order's handlers wrote, from the running server's handler
//! write audit (`GET /api/admin/orders/{no}/writes`), printed for people or as JSON.
//!
//! Every value shown was written by a handler from an order's data: it is cleaned for
//! the terminal ([`render::clean`]) like everything else from the database.

use serde_json::Value;

use super::admin::{query_string, AdminClient};
use super::payments::segment;
use super::render::clean;
use paynotify::config::Config;
use paynotify::store::audit::changed_fields;

/// Longest value shown for a field (`--json` has them whole).
const MAX_VALUE: usize = 120;

/// Runs `orders writes NO [--after ID] [--limit N]`.
pub async fn writes(
    config: &Config,
    json: bool,
    out_trade_no: &str,
    after: Option<i64>,
    limit: u32,
) -> anyhow::Result<()> {
    let query = query_string(&[
        ("after_id", after.map(|a| a.to_string())),
        ("limit", Some(limit.to_string())),
    ]);
    let path = format!("/api/admin/orders/{}/writes{query}", segment(out_trade_no));
    let page = AdminClient::new(config).get(&path).await?;
    if json {
        println!("{}", serde_json::to_string(&page)?);
    } else {
        print!("{}", writes_text(&page, limit));
    }
    Ok(())
}

/// A value for people: compact JSON (strings quoted), `–` when absent, cleaned and cut.
fn shown(v: Option<&Value>) -> String {
    match v {
        Some(v) => clean(&v.to_string(), MAX_VALUE),
        None => "–".into(),
    }
}

/// Text of a JSON member, cleaned; empty when absent.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => clean(s, MAX_VALUE),
        Value::Null => String::new(),
        other => clean(&other.to_string(), MAX_VALUE),
    }
}

/// The heading of a call: `paid  notification 12  recharge@0.1.0 sha256:…`.
fn call_heading(w: &Value) -> String {
    let mut head = text(&w["call"]);
    if let Some(r) = w["out_refund_no"].as_str() {
        head.push_str(&format!("  refund {}", clean(r, MAX_VALUE)));
    }
    if let Some(n) = w["notification_id"].as_i64() {
        head.push_str(&format!("  notification {n}"));
    }
    if let Some(t) = w["task_id"].as_i64() {
        head.push_str(&format!("  task {t}"));
    }
    head.push_str(&format!("  {}", text(&w["build"])));
    head
}

/// Which call a write belongs to: writes of one call are listed under one heading.
fn call_key(w: &Value) -> [&Value; 5] {
    [
        &w["call"],
        &w["notification_id"],
        &w["out_refund_no"],
        &w["task_id"],
        &w["build"],
    ]
}

/// One write: `#id op target`, then what changed, one line a field.
fn write_lines(w: &Value) -> String {
    let op = text(&w["op"]);
    let id = w["id"].as_i64().unwrap_or_default();
    if op == "task" {
        return format!(
            "  #{id}  task    {} (task {})\n          payload: {}\n",
            text(&w["collection"]),
            text(&w["doc_id"]),
            shown(w.get("after").filter(|v| !v.is_null())),
        );
    }
    let mut out = format!(
        "  #{id}  {op:<6}  {}/{}\n",
        text(&w["collection"]),
        text(&w["doc_id"])
    );
    let side = |name: &str| w.get(name).filter(|v| !v.is_null());
    let changes = changed_fields(side("before"), side("after"));
    if changes.is_empty() {
        out.push_str("          (no change)\n");
    }
    for c in changes {
        let field = if c.field.is_empty() {
            "(document)".to_owned()
        } else {
            clean(&c.field, MAX_VALUE)
        };
        out.push_str(&format!(
            "          {field}: {} → {}\n",
            shown(c.before.as_ref()),
            shown(c.after.as_ref())
        ));
    }
    out
}

/// The page as text: the writes grouped by call, and how to get the next page.
fn writes_text(page: &Value, limit: u32) -> String {
    let no = text(&page["out_trade_no"]);
    let writes = page["writes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if writes.is_empty() {
        return format!("no handler writes recorded for order {no}\n");
    }
    let mut out = format!("handler writes of order {no}:\n");
    let mut last = None;
    for w in writes {
        let key = call_key(w);
        if last != Some(key) {
            out.push_str(&call_heading(w));
            out.push('\n');
            last = Some(key);
        }
        out.push_str(&write_lines(w));
    }
    if let Some(next) = page["next_after_id"].as_i64() {
        out.push_str(&format!(
            "next page: paynotify orders writes {no} --after {next} --limit {limit}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn writes_read_per_call_with_the_fields_they_changed() {
        let page = json!({
            "out_trade_no": "G1",
            "writes": [
                { "id": 1, "call": "paid", "notification_id": 3, "out_refund_no": null, "task_id": null,
                  "build": "goods@0.1.0 sha256:ab", "seq": 0, "op": "inc", "collection": "goods",
                  "doc_id": "g1", "before": null, "after": { "stock": -2 }, "created_at": 1 },
                { "id": 2, "call": "paid", "notification_id": 3, "out_refund_no": null, "task_id": null,
                  "build": "goods@0.1.0 sha256:ab", "seq": 1, "op": "task", "collection": "send-message",
                  "doc_id": "7", "before": null, "after": { "to": "u\u{1b}[31m" }, "created_at": 1 },
                { "id": 3, "call": "refunded", "notification_id": 4, "out_refund_no": "RF1", "task_id": null,
                  "build": "goods@0.1.0 sha256:ab", "seq": 0, "op": "set", "collection": "goods",
                  "doc_id": "g1", "before": { "stock": -2, "x": 1 }, "after": { "stock": 0, "x": 1 }, "created_at": 1 },
            ],
            "next_after_id": 3,
        });
        let t = writes_text(&page, 3);
        assert_eq!(
            t,
            "handler writes of order G1:\n\
             paid  notification 3  goods@0.1.0 sha256:ab\n\
             \x20 #1  inc     goods/g1\n\
             \x20         stock: – → -2\n\
             \x20 #2  task    send-message (task 7)\n\
             \x20         payload: {\"to\":\"u\\u001b[31m\"}\n\
             refunded  refund RF1  notification 4  goods@0.1.0 sha256:ab\n\
             \x20 #3  set     goods/g1\n\
             \x20         stock: -2 → 0\n\
             next page: paynotify orders writes G1 --after 3 --limit 3\n"
        );
        let none = writes_text(
            &json!({ "out_trade_no": "G2", "writes": [], "next_after_id": null }),
            5,
        );
        assert_eq!(none, "no handler writes recorded for order G2\n");
    }

    #[test]
    fn control_characters_a_handler_wrote_never_reach_the_terminal() {
        let w = json!({ "id": 1, "op": "set", "collection": "c", "doc_id": "d\u{9b}2J",
                        "before": null, "after": { "k\u{1b}": "v" } });
        let t = write_lines(&w);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
    }
}
