//! The "Handler writes" section of an order's page: what its handlers wrote (the handler
//! write audit), each write with the fields it changed and both versions of the document.
//!
//! Everything here was written by a handler from an order's data (user ids, `custom`):
//! attacker-influenced text. maud escapes every value it prints; nothing is marked safe.

use maud::{html, Markup};
use serde_json::Value;

use super::format::{pretty_json, time};
use crate::store::audit::{changed_fields, CallKind, CallRef, WriteOp, WriteRecord};

/// A document version as recorded, parsed; a text that is not JSON is shown as it is.
fn parsed(text: Option<&str>) -> Option<Value> {
    text.map(|t| serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_owned())))
}

/// A field's value in a change: compact JSON, or a dash when absent.
fn value(v: Option<&Value>) -> Markup {
    match v {
        Some(v) => html! { code { (v.to_string()) } },
        None => html! { span.muted { "–" } },
    }
}

/// The call a write belongs to: kind, its notification / refund / task.
fn call_cell(c: &CallRef) -> Markup {
    html! {
        span class={"badge call-" (c.call.as_str())} { (c.call.as_str()) }
        @match c.call {
            CallKind::Paid | CallKind::Refunded => {
                @if let Some(r) = &c.out_refund_no { " refund " (r) }
                @if let Some(id) = c.notification_id {
                    " " a href={"/console/notifications/" (id)} { "#" (id) }
                }
            }
            CallKind::Task => { @if let Some(id) = c.task_id { " task #" (id) } }
        }
    }
}

/// What a write changed: a task's payload, or the document's changed top-level fields.
fn changes_cell(w: &WriteRecord) -> Markup {
    let after = parsed(w.write.after.as_deref());
    if w.write.op == WriteOp::Task {
        return html! { "payload " (value(after.as_ref())) };
    }
    let before = parsed(w.write.before.as_deref());
    let changes = changed_fields(before.as_ref(), after.as_ref());
    html! {
        @if changes.is_empty() { span.muted { "no change" } }
        @else {
            ul.changes {
                @for c in &changes {
                    li {
                        @if c.field.is_empty() { "(document)" } @else { code { (c.field) } }
                        ": " (value(c.before.as_ref())) " → " (value(c.after.as_ref()))
                    }
                }
            }
        }
    }
}

/// Both versions of the document, folded.
fn versions(w: &WriteRecord) -> Markup {
    let side = |label: &str, text: Option<&str>| match parsed(text) {
        Some(v) => html! { p { (label) } pre { (pretty_json(&v)) } },
        None => html! { p { (label) " " span.muted { "(none)" } } },
    };
    html! {
        details {
            summary { "before / after" }
            (side("Before", w.write.before.as_deref()))
            (side(if w.write.op == WriteOp::Task { "Payload" } else { "After" }, w.write.after.as_deref()))
        }
    }
}

/// The section with `writes`; `more`: the order has others, not shown.
pub fn section(writes: &[WriteRecord], more: bool) -> Markup {
    html! {
        h2 #handler-writes { "Handler writes" }
        @if writes.is_empty() {
            p.empty { "No writes recorded." }
        } @else {
            table #writes {
                thead { tr {
                    th { "#" } th { "Call" } th { "Build" } th { "Op" } th { "Document" }
                    th { "Changed" } th { "Recorded" }
                } }
                tbody {
                    @for w in writes {
                        tr data-write=(w.id) {
                            td.num { (w.id) }
                            td { (call_cell(&w.call)) }
                            td { (w.call.build) }
                            td { (w.write.op.as_str()) }
                            td {
                                @if w.write.op == WriteOp::Task {
                                    "task " (w.write.collection) " #" (w.write.doc_id)
                                } @else {
                                    (w.write.collection) "/" (w.write.doc_id)
                                }
                            }
                            td { (changes_cell(w)) (versions(w)) }
                            td { (time(w.created_at)) }
                        }
                    }
                }
            }
            @if more {
                p.muted { "The first " (writes.len()) " writes are shown; "
                    code { "paynotify orders writes" } " and "
                    code { "GET /api/admin/orders/{no}/writes" } " list them all." }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::Write;

    fn record(op: WriteOp, doc_id: &str, before: Option<&str>, after: Option<&str>) -> WriteRecord {
        WriteRecord {
            id: 1,
            call: CallRef {
                call: CallKind::Paid,
                out_trade_no: Some("G1".into()),
                notification_id: Some(3),
                out_refund_no: None,
                task_id: None,
                build: "goods@0.1.0 sha256:abc".into(),
            },
            seq: 0,
            write: Write {
                op,
                collection: "goods".into(),
                doc_id: doc_id.into(),
                before: before.map(str::to_owned),
                after: after.map(str::to_owned),
            },
            created_at: 0,
        }
    }

    #[test]
    fn what_a_handler_wrote_is_escaped_everywhere_it_shows() {
        let evil = "<script>alert(1)</script>";
        let w = record(
            WriteOp::Set,
            evil,
            None,
            Some(&serde_json::json!({ evil: evil }).to_string()),
        );
        let html = section(&[w], false).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
    }

    #[test]
    fn changed_fields_show_before_and_after_with_a_dash_for_absent() {
        let w = record(
            WriteOp::Inc,
            "g1",
            Some(r#"{"stock":5}"#),
            Some(r#"{"stock":3,"sold":2}"#),
        );
        let html = changes_cell(&w).into_string();
        assert!(
            html.contains("<code>sold</code>: <span class=\"muted\">–</span> → <code>2</code>"),
            "{html}"
        );
        assert!(
            html.contains("<code>stock</code>: <code>5</code> → <code>3</code>"),
            "{html}"
        );
    }
}
