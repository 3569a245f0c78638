//! Comparing a candidate's run with the serving call: the outcome, the documents as each
//! left them, and the tasks each enqueued.
//!
//! Effects are compared, not the sequence of operations: a `set` that leaves the same
//! document as a `merge` is the same; a document written twice compares by its last
//! state; tasks compare as a set of (name, payload). JSON compares by value, so key order
//! does not matter.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::Served;
use crate::plugins::capabilities::record::DocKey;
use crate::plugins::HandlerFailure;
use crate::store::audit::{Write, WriteOp};

/// How a shadow run compared.
#[derive(Debug, Clone, PartialEq)]
pub enum Compared {
    /// Same outcome, same documents, same tasks.
    Same,
    /// Something differs: what, both versions.
    Different(Value),
    /// The candidate failed: how, beside the serving outcome.
    Failed(Value),
}

impl Compared {
    /// `same`, `different` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Compared::Same => "same",
            Compared::Different(_) => "different",
            Compared::Failed(_) => "failed",
        }
    }
}

/// The candidate failed with `failure`.
pub fn failed(served: &Served, failure: &HandlerFailure) -> Compared {
    Compared::Failed(json!({
        "candidate": { "error": failure.to_string(), "failure": failure.to_json() },
        "serving": { "outcome": served.outcome },
    }))
}

/// The candidate returned `outcome` having made `writes`.
pub fn compare(served: &Served, outcome: &Value, writes: &[Write]) -> Compared {
    let mut diff = serde_json::Map::new();
    if outcome != &served.outcome {
        diff.insert(
            "outcome".into(),
            json!({ "serving": served.outcome, "candidate": outcome }),
        );
    }
    let serving_docs = documents(&served.recording.writes);
    let candidate_docs = documents(writes);
    let keys: std::collections::BTreeSet<&DocKey> =
        serving_docs.keys().chain(candidate_docs.keys()).collect();
    let mut differing = Vec::new();
    for key in keys {
        let (s, c) = (serving_docs.get(key), candidate_docs.get(key));
        // A document one build wrote and the other did not stays as it was for the
        // other: compare with that.
        let before = || parse(served.recording.seen.get(key).cloned().flatten().as_deref());
        let s_after = s.cloned().unwrap_or_else(before);
        let c_after = c.cloned().unwrap_or_else(before);
        if s_after != c_after {
            differing.push(json!({
                "collection": key.0,
                "id": key.1,
                "before": before(),
                "serving": s_after,
                "candidate": c_after,
            }));
        }
    }
    if !differing.is_empty() {
        diff.insert("writes".into(), Value::Array(differing));
    }
    let (s_tasks, c_tasks) = (tasks(&served.recording.writes), tasks(writes));
    if s_tasks != c_tasks {
        diff.insert(
            "tasks".into(),
            json!({ "serving": s_tasks, "candidate": c_tasks }),
        );
    }
    if diff.is_empty() {
        Compared::Same
    } else {
        Compared::Different(Value::Object(diff))
    }
}

/// Each written document's last state (`null`: deleted).
fn documents(writes: &[Write]) -> BTreeMap<DocKey, Value> {
    writes
        .iter()
        .filter(|w| w.op != WriteOp::Task)
        .map(|w| {
            (
                (w.collection.clone(), w.doc_id.clone()),
                parse(w.after.as_deref()),
            )
        })
        .collect()
}

/// The tasks enqueued, as `{name, payload}`, sorted so that order does not matter.
fn tasks(writes: &[Write]) -> Vec<Value> {
    let mut tasks: Vec<Value> = writes
        .iter()
        .filter(|w| w.op == WriteOp::Task)
        .map(|w| json!({ "name": w.collection, "payload": parse(w.after.as_deref()) }))
        .collect();
    tasks.sort_by_key(|t| t.to_string());
    tasks
}

/// Stored JSON text as a value (`null` when absent; the text itself if it is not JSON).
fn parse(text: Option<&str>) -> Value {
    match text {
        None => Value::Null,
        Some(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::capabilities::Recording;
    use crate::shadow::Call;

    fn write(op: WriteOp, id: &str, before: Option<&str>, after: Option<&str>) -> Write {
        Write {
            op,
            collection: "users".into(),
            doc_id: id.into(),
            before: before.map(str::to_owned),
            after: after.map(str::to_owned),
        }
    }

    fn served(writes: Vec<Write>, outcome: Value) -> Served {
        let mut recording = Recording::default();
        for w in writes {
            recording.push(w);
        }
        Served {
            plugin_type: "recharge".into(),
            build: "recharge@1 sha256:x".into(),
            out_trade_no: "o1".into(),
            notification_id: 1,
            out_refund_no: None,
            account: ("wechat-v2".into(), "default".into(), None),
            call: Call::Paid {
                order: crate::plugins::bindings::Order {
                    out_trade_no: "o1".into(),
                    type_: "recharge".into(),
                    provider: "wechat-v2".into(),
                    account: "default".into(),
                    total_fee: 1,
                    user_id: "u".into(),
                    custom: "{}".into(),
                    transaction_id: "t".into(),
                },
                notification: crate::plugins::bindings::Notification {
                    id: 1,
                    provider: "wechat-v2".into(),
                    account: "default".into(),
                    out_trade_no: "o1".into(),
                    transaction_id: "t".into(),
                    amount: 1,
                    paid_at: None,
                    fields: Vec::new(),
                },
            },
            recording,
            outcome,
        }
    }

    #[test]
    fn same_effects_by_other_operations_are_the_same() {
        let s = served(
            vec![write(
                WriteOp::Inc,
                "u",
                Some(r#"{"b":1}"#),
                Some(r#"{"b":6}"#),
            )],
            json!({"balance": 6}),
        );
        let merged = [write(
            WriteOp::Merge,
            "u",
            Some(r#"{"b":1}"#),
            Some(r#"{ "b" : 6 }"#),
        )];
        assert_eq!(compare(&s, &json!({"balance": 6}), &merged), Compared::Same);
    }

    #[test]
    fn a_different_credit_shows_both_versions_and_the_outcome() {
        let s = served(
            vec![write(
                WriteOp::Inc,
                "u",
                Some(r#"{"b":1}"#),
                Some(r#"{"b":6}"#),
            )],
            json!({"balance": 6}),
        );
        let doubled = [write(
            WriteOp::Inc,
            "u",
            Some(r#"{"b":1}"#),
            Some(r#"{"b":11}"#),
        )];
        let Compared::Different(diff) = compare(&s, &json!({"balance": 11}), &doubled) else {
            panic!("expected a difference");
        };
        assert_eq!(diff["outcome"]["serving"], json!({"balance": 6}));
        assert_eq!(diff["outcome"]["candidate"], json!({"balance": 11}));
        assert_eq!(diff["writes"][0]["before"], json!({"b": 1}));
        assert_eq!(diff["writes"][0]["serving"], json!({"b": 6}));
        assert_eq!(diff["writes"][0]["candidate"], json!({"b": 11}));
    }

    #[test]
    fn a_write_only_one_build_made_compares_with_the_document_before() {
        let s = served(
            vec![write(
                WriteOp::Inc,
                "u",
                Some(r#"{"b":1}"#),
                Some(r#"{"b":6}"#),
            )],
            json!(null),
        );
        let Compared::Different(diff) = compare(&s, &json!(null), &[]) else {
            panic!("expected a difference");
        };
        assert_eq!(diff["writes"][0]["candidate"], json!({"b": 1}));
        assert!(diff.get("outcome").is_none());
    }

    #[test]
    fn tasks_compare_as_a_set() {
        let task = |name: &str, id: &str| Write {
            op: WriteOp::Task,
            collection: name.into(),
            doc_id: id.into(),
            before: None,
            after: Some("{}".into()),
        };
        let s = served(vec![task("a", "1"), task("b", "2")], json!(null));
        assert_eq!(
            compare(&s, &json!(null), &[task("b", "2"), task("a", "1")]),
            Compared::Same
        );
        assert!(matches!(
            compare(&s, &json!(null), &[task("a", "1")]),
            Compared::Different(_)
        ));
    }
}
