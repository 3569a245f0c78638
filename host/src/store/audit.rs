//! The handler write audit in the database (migration 0014, `handler_writes`): every
//! document write and every enqueued task of a handler call, written in the call's own
//! transaction by one multi-row `INSERT` per batch, so the audit holds exactly what
//! committed. Read back by order ([`AuditStore::order_writes`]) for the API, the CLI and
//! the console, and deleted after `[audit] keep_days` ([`AuditStore::prune`]).

use async_trait::async_trait;
use serde::Serialize;

use super::statement::{required, storable, storable_opt, Columns, Dialect, On, Sql, Statement};
use super::StoreError;
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

/// Most document bytes (before + after) in one `INSERT`: a handler may write documents of
/// up to 256 KiB, and a statement of a thousand of them would be half a gigabyte.
pub(crate) const BYTES_PER_INSERT: usize = 8 * 1024 * 1024;

/// The rows of `calls`, flattened with their `seq`, in chunks of at most
/// [`ROWS_PER_INSERT`] rows and about [`BYTES_PER_INSERT`] bytes (a chunk always takes
/// at least one row).
pub(crate) fn rows(calls: &[CallWrites]) -> Vec<Vec<(&CallRef, i64, &Write)>> {
    let mut chunks: Vec<Vec<(&CallRef, i64, &Write)>> = Vec::new();
    let mut bytes = 0;
    for c in calls {
        for (i, w) in c.writes.iter().enumerate() {
            let size =
                w.before.as_ref().map_or(0, String::len) + w.after.as_ref().map_or(0, String::len);
            let full = chunks.last().is_none_or(|last| {
                last.len() >= ROWS_PER_INSERT || bytes + size > BYTES_PER_INSERT
            });
            if full {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(last) = chunks.last_mut() {
                last.push((&c.call, c.first_seq + i as i64, w));
            }
        }
    }
    chunks
}

// ---- The read side: an order's writes, page by page, and pruning by age. ----

/// Most writes one page of [`AuditStore::order_writes`] returns.
pub const MAX_PAGE: u32 = 500;

/// Every column of `handler_writes` that [`write_row`] reads.
const COLUMNS: &str = "id, out_trade_no, call_kind, notification_id, out_refund_no, task_id, \
     build, seq, op, collection, doc_id, before, after, created_at";

/// A row of [`COLUMNS`] as a [`WriteRecord`].
fn write_row(r: &dyn Columns) -> Result<WriteRecord, StoreError> {
    let call = required(r.text("call_kind")?, "call_kind")?;
    let op = required(r.text("op")?, "op")?;
    Ok(WriteRecord {
        id: required(r.int8("id")?, "id")?,
        call: CallRef {
            call: CallKind::parse(&call)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown handler call `{call}`")))?,
            out_trade_no: r.text("out_trade_no")?,
            notification_id: r.int8("notification_id")?,
            out_refund_no: r.text("out_refund_no")?,
            task_id: r.int8("task_id")?,
            build: required(r.text("build")?, "build")?,
        },
        seq: required(r.int8("seq")?, "seq")?,
        write: Write {
            op: WriteOp::parse(&op)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown write op `{op}`")))?,
            collection: required(r.text("collection")?, "collection")?,
            doc_id: required(r.text("doc_id")?, "doc_id")?,
            before: r.text("before")?,
            after: r.text("after")?,
        },
        created_at: required(r.int8("created_at")?, "created_at")?,
    })
}

/// The writes of `out_trade_no` with an id above `after_id`, oldest first, at most
/// `limit` (1 to [`MAX_PAGE`]): one range of the `(out_trade_no, id)` index.
fn select_order_writes(out_trade_no: &str, after_id: Option<i64>, limit: u32) -> Statement<'_> {
    let mut st = Statement::build();
    st.push(&format!(
        "SELECT {COLUMNS} FROM handler_writes WHERE out_trade_no = "
    ))
    .push_param(storable(out_trade_no));
    if let Some(id) = after_id {
        st.push(" AND id > ").push_param(id);
    }
    st.push(" ORDER BY id LIMIT ")
        .push_param(i64::from(limit.clamp(1, MAX_PAGE)));
    st
}

/// Deletes up to `limit` of the oldest rows of `table` created before `created_before`,
/// picked in a `WITH` query (run once on PostgreSQL; see `store::retention` for why not
/// `IN (SELECT … LIMIT)`), skipping rows another host is deleting. `order` is the
/// cheapest way to the oldest rows: an index on `created_at`, or the id, which grows with
/// time.
fn prune(
    d: &Dialect,
    table: &str,
    order: &str,
    created_before: Millis,
    limit: u32,
) -> Statement<'static> {
    Statement::new(format!(
        "WITH doomed AS (SELECT id FROM {table} WHERE created_at < $1 \
                         ORDER BY {order} LIMIT $2{}) \
         DELETE FROM {table} WHERE id IN (SELECT id FROM doomed)",
        d.skip_locked
    ))
    .bind(created_before)
    .bind(i64::from(limit.max(1)))
}

/// How many rows one [`AuditStore::prune`] deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// From `handler_writes`.
    pub writes: u64,
    /// From `shadow_differences`.
    pub differences: u64,
}

impl Pruned {
    /// Whether either table gave a full chunk of `limit` rows (there may be more).
    pub fn full(&self, limit: u32) -> bool {
        self.writes >= u64::from(limit) || self.differences >= u64::from(limit)
    }
}

/// The recorded writes (every backend's, reached through
/// [`Store::audit`](super::Store::audit)).
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// The writes recorded for `out_trade_no` (its payment, refunds and task runs), oldest
    /// first: those with an id above `after_id` if given, at most `limit` (capped at
    /// [`MAX_PAGE`]).
    async fn order_writes(
        &self,
        out_trade_no: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<WriteRecord>, StoreError>;
    /// Deletes up to `limit` of the oldest recorded writes, and up to `limit` of the
    /// oldest recorded shadow differences, created before `created_before`: two short
    /// statements, so a first prune of a large table never holds SQLite's writer long.
    /// Call again while [`Pruned::full`]. Several hosts may run it at once.
    async fn prune(&self, created_before: Millis, limit: u32) -> Result<Pruned, StoreError>;
}

#[async_trait]
impl<S: Sql> AuditStore for S {
    async fn order_writes(
        &self,
        out_trade_no: &str,
        after_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<WriteRecord>, StoreError> {
        let st = select_order_writes(out_trade_no, after_id, limit);
        self.fetch(On::Read, &st, write_row).await
    }

    async fn prune(&self, created_before: Millis, limit: u32) -> Result<Pruned, StoreError> {
        let d = self.dialect();
        let writes = prune(d, "handler_writes", "created_at", created_before, limit);
        // `shadow_differences` has no index on `created_at`; its ids grow with time.
        let differences = prune(d, "shadow_differences", "id", created_before, limit);
        Ok(Pruned {
            writes: self.execute(On::Write, &writes).await?,
            differences: self.execute(On::Write, &differences).await?,
        })
    }
}

// ---- Reading a write: what it changed. ----

/// One top-level field that a document write changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// The field's name; empty when the documents are not both JSON objects (then the
    /// change is the whole document).
    pub field: String,
    /// Its value before (`None`: absent).
    pub before: Option<serde_json::Value>,
    /// Its value after (`None`: absent).
    pub after: Option<serde_json::Value>,
}

/// The top-level fields that differ between a document `before` and `after` a write
/// (`None`: the document did not exist), by field name. A document that is not a JSON
/// object on either side is one change of the whole document (field `""`).
pub fn changed_fields(
    before: Option<&serde_json::Value>,
    after: Option<&serde_json::Value>,
) -> Vec<FieldChange> {
    use serde_json::{Map, Value};
    fn fields<'v>(
        v: Option<&'v Value>,
        empty: &'v Map<String, Value>,
    ) -> Option<&'v Map<String, Value>> {
        match v {
            None => Some(empty),
            Some(Value::Object(m)) => Some(m),
            Some(_) => None,
        }
    }
    let empty = Map::new();
    let (Some(b), Some(a)) = (fields(before, &empty), fields(after, &empty)) else {
        return if before == after {
            Vec::new()
        } else {
            vec![FieldChange {
                field: String::new(),
                before: before.cloned(),
                after: after.cloned(),
            }]
        };
    };
    let names: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    names
        .into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| FieldChange {
            field: k.clone(),
            before: b.get(k).cloned(),
            after: a.get(k).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn audit_rows_are_chunked_by_count_and_by_size() {
        let doc = |n: usize| Some("x".repeat(n));
        let call = |writes: Vec<Write>| CallWrites {
            call: CallRef {
                call: CallKind::Paid,
                out_trade_no: Some("o".into()),
                notification_id: Some(1),
                out_refund_no: None,
                task_id: None,
                build: "b".into(),
            },
            writes,
            first_seq: 0,
        };
        let write = |size: usize| Write {
            op: WriteOp::Set,
            collection: "c".into(),
            doc_id: "d".into(),
            before: None,
            after: doc(size),
        };
        let many = [call((0..2500).map(|_| write(10)).collect())];
        let sizes: Vec<usize> = rows(&many).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        let big = [call((0..40).map(|_| write(256 * 1024)).collect())];
        let chunks = rows(&big);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 40);
        assert!(
            chunks.iter().all(|c| c.len() <= 32),
            "{:?}",
            chunks.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(chunks[1][0].1, 32, "seq follows the writes across chunks");
        assert!(rows(&[]).is_empty());
    }

    #[test]
    fn a_page_of_an_order_is_one_index_range_and_capped() {
        let st = select_order_writes("R1", Some(7), 9999);
        assert_eq!(
            st.text,
            format!(
                "SELECT {COLUMNS} FROM handler_writes WHERE out_trade_no = $1 \
                 AND id > $2 ORDER BY id LIMIT $3"
            )
        );
        assert!(matches!(
            st.params[2],
            super::super::statement::Param::Int8(Some(500))
        ));
        let first = select_order_writes("R1", None, 0);
        assert!(!first.text.contains("id >"), "{}", first.text);
        assert!(matches!(
            first.params[1],
            super::super::statement::Param::Int8(Some(1))
        ));
    }

    #[test]
    fn changed_fields_are_the_top_level_fields_that_differ() {
        let before = json!({ "balance": 100, "name": "a", "gone": true });
        let after = json!({ "balance": 250, "name": "a", "new": [1] });
        let changes = changed_fields(Some(&before), Some(&after));
        let shown: Vec<_> = changes
            .iter()
            .map(|c| (c.field.as_str(), c.before.clone(), c.after.clone()))
            .collect();
        assert_eq!(
            shown,
            [
                ("balance", Some(json!(100)), Some(json!(250))),
                ("gone", Some(json!(true)), None),
                ("new", None, Some(json!([1]))),
            ]
        );
        // Created, deleted, unchanged.
        assert_eq!(changed_fields(None, Some(&json!({ "x": 1 }))).len(), 1);
        assert_eq!(
            changed_fields(Some(&json!({ "x": 1 })), None)[0].after,
            None
        );
        assert!(changed_fields(Some(&after), Some(&after)).is_empty());
        // Not objects: the whole document.
        let whole = changed_fields(Some(&json!([1])), Some(&json!({ "x": 1 })));
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].field, "");
    }

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
