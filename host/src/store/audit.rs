//! The handler write audit in the database (migration 0014, `handler_writes`): every
//! document write and every enqueued task of a handler call, written in the call's own
//! transaction by one multi-row `INSERT` per batch, so the audit holds exactly what
//! committed.

use serde::Serialize;

use super::statement::{storable_opt, Statement};
use crate::time::Millis;

/// Which handler call made a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// `handle-paid`, in the payment transaction.
    Paid,
    /// `handle-refunded`, in the refund transaction.
    Refunded,
    /// `run-task`, each write in a transaction of its own.
    Task,
}

impl CallKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Paid => "paid",
            CallKind::Refunded => "refunded",
            CallKind::Task => "task",
        }
    }

    /// From its stored text.
    pub fn parse(s: &str) -> Option<CallKind> {
        match s {
            "paid" => Some(CallKind::Paid),
            "refunded" => Some(CallKind::Refunded),
            "task" => Some(CallKind::Task),
            _ => None,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOp {
    /// `db.insert` that wrote (a conflict writes nothing and is not recorded).
    Insert,
    /// `db.set` replacing the document.
    Set,
    /// `db.set` merging fields into it.
    Merge,
    /// `db.inc` of one integer field.
    Inc,
    /// `db.delete` that deleted.
    Delete,
    /// `tasks.enqueue`: `collection` is the task name, `doc_id` its id, `after` its
    /// payload.
    Task,
}

impl WriteOp {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOp::Insert => "insert",
            WriteOp::Set => "set",
            WriteOp::Merge => "merge",
            WriteOp::Inc => "inc",
            WriteOp::Delete => "delete",
            WriteOp::Task => "task",
        }
    }

    /// From its stored text.
    pub fn parse(s: &str) -> Option<WriteOp> {
        Some(match s {
            "insert" => WriteOp::Insert,
            "set" => WriteOp::Set,
            "merge" => WriteOp::Merge,
            "inc" => WriteOp::Inc,
            "delete" => WriteOp::Delete,
            "task" => WriteOp::Task,
            _ => return None,
        })
    }
}

/// One write of a handler call, as the call recorded it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Write {
    /// What it did.
    pub op: WriteOp,
    /// The document's collection (a task: its name).
    pub collection: String,
    /// The document's id (a task: its id).
    pub doc_id: String,
    /// The document before (JSON text; `None`: it did not exist).
    pub before: Option<String>,
    /// The document after (JSON text; `None`: deleted). A task: its payload.
    pub after: Option<String>,
}

/// The call a batch of writes belongs to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRef {
    /// Which handler call.
    pub call: CallKind,
    /// The order it was about.
    pub out_trade_no: Option<String>,
    /// The notification it handled.
    pub notification_id: Option<i64>,
    /// The refund it handled.
    pub out_refund_no: Option<String>,
    /// The task it ran.
    pub task_id: Option<i64>,
    /// `type@version sha256:… [signed …]`.
    pub build: String,
}

/// The writes of one handler call, to record with its transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct CallWrites {
    /// Whose.
    pub call: CallRef,
    /// In the order the handler made them; `seq` is the index (plus `first_seq`).
    pub writes: Vec<Write>,
    /// The `seq` of the first write (a task run records one write at a time).
    pub first_seq: i64,
}

/// What [`Tx::doc_inc_audited`](super::Tx::doc_inc_audited) answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Incremented {
    /// The field's new value.
    pub value: i64,
    /// The document before (`None`: the increment created it).
    pub before: Option<String>,
    /// The document after.
    pub after: String,
}

/// The document an increment overwrote, from the statement's snapshot of it: that
/// snapshot if adding `delta` to `field` in it gives `after` (nothing else changed it
/// meanwhile), else `after` with the increment taken back (another transaction changed the
/// document while this one waited for its lock: what it overwrote is that transaction's
/// result, which differs from `after` only in `field`). `value` is the field after.
pub(crate) fn before_increment(
    snapshot: Option<String>,
    after: &str,
    field: &str,
    delta: i64,
    value: i64,
) -> Option<String> {
    use serde_json::{Map, Value};
    let parse = |text: &str| match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    let after_doc = parse(after)?;
    let expected = |before: Option<&Map<String, Value>>| {
        let mut m = before.cloned().unwrap_or_default();
        let old = m.get(field).and_then(Value::as_i64).unwrap_or(0);
        m.insert(field.to_owned(), Value::from(old.checked_add(delta)?));
        Some(m)
    };
    match snapshot.as_deref().map(parse) {
        None if expected(None).as_ref() == Some(&after_doc) => return None,
        Some(Some(before)) if expected(Some(&before)).as_ref() == Some(&after_doc) => {
            return snapshot
        }
        _ => {}
    }
    let mut before = after_doc;
    before.insert(field.to_owned(), Value::from(value.checked_sub(delta)?));
    Some(Value::Object(before).to_string())
}

/// A recorded write, as read back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteRecord {
    /// Id (increasing in commit order per host).
    pub id: i64,
    /// Whose.
    #[serde(flatten)]
    pub call: CallRef,
    /// Its place among the call's writes.
    pub seq: i64,
    /// What it did and to what.
    #[serde(flatten)]
    pub write: Write,
    /// When it was recorded.
    pub created_at: Millis,
}

/// Most rows in one `INSERT` (14 parameters each: well under either backend's limit).
pub(crate) const ROWS_PER_INSERT: usize = 1000;

/// The `INSERT` of `rows` (at most [`ROWS_PER_INSERT`], at least one) into
/// `handler_writes`, pushed onto `st`.
pub(crate) fn push_insert<'a>(st: &mut Statement<'a>, rows: &[(&'a CallRef, i64, &'a Write)]) {
    let now = crate::time::now_ms();
    st.push(
        "INSERT INTO handler_writes (out_trade_no, call_kind, notification_id, out_refund_no, \
         task_id, build, seq, op, collection, doc_id, before, after, created_at) ",
    )
    .push_values(rows, |&(c, seq, w)| {
        vec![
            storable_opt(c.out_trade_no.as_deref()).into(),
            c.call.as_str().into(),
            c.notification_id.into(),
            storable_opt(c.out_refund_no.as_deref()).into(),
            c.task_id.into(),
            c.build.as_str().into(),
            seq.into(),
            w.op.as_str().into(),
            w.collection.as_str().into(),
            w.doc_id.as_str().into(),
            storable_opt(w.before.as_deref()).into(),
            storable_opt(w.after.as_deref()).into(),
            now.into(),
        ]
    });
}

/// The rows of `calls`, flattened with their `seq`, in chunks of at most
/// [`ROWS_PER_INSERT`].
pub(crate) fn rows(calls: &[CallWrites]) -> Vec<Vec<(&CallRef, i64, &Write)>> {
    let flat: Vec<(&CallRef, i64, &Write)> = calls
        .iter()
        .flat_map(|c| {
            c.writes
                .iter()
                .enumerate()
                .map(move |(i, w)| (&c.call, c.first_seq + i as i64, w))
        })
        .collect();
    flat.chunks(ROWS_PER_INSERT).map(<[_]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_is_the_before_unless_another_transaction_changed_the_document() {
        let snap = Some(r#"{"name":"a","balance":5}"#.to_owned());
        let after = r#"{"name":"a","balance":8}"#;
        assert_eq!(before_increment(snap.clone(), after, "balance", 3, 8), snap);
        // Created by the increment.
        assert_eq!(
            before_increment(None, r#"{"balance":3}"#, "balance", 3, 3),
            None
        );
        // Another transaction set the balance to 10 (and a field) while this one waited.
        let after = r#"{"name":"b","balance":13}"#;
        let before = before_increment(snap, after, "balance", 3, 13).unwrap();
        let before: serde_json::Value = serde_json::from_str(&before).unwrap();
        assert_eq!(before, serde_json::json!({"name": "b", "balance": 10}));
        // Another transaction created it while this one waited.
        let before = before_increment(None, r#"{"balance":7}"#, "balance", 3, 7).unwrap();
        assert_eq!(before, r#"{"balance":4}"#);
    }
}
