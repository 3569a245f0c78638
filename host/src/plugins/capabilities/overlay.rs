//! `db` and `tasks` in a shadow run: a view of the documents that can never commit.
//!
//! A candidate build runs on the same order and notification as the serving build, after
//! the serving build's transaction committed. It must see the documents as the serving
//! build saw them, not as that build left them: every document the serving call touched
//! reads as it first saw it ([`Recording::seen`](super::Recording)); any other document is
//! read from the database at the time of the shadow run (outside any transaction). The
//! candidate's writes stay in this view and are only compared, never applied; there is no
//! transaction to commit. Its tasks are recorded, never enqueued; its `db.insert` without
//! an id and its `tasks.enqueue` get the serving call's ids in the same order, so that the
//! same behaviour compares as the same.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::db::merge_into;
use super::record::{DocKey, Recording};
use crate::store::audit::{Write, WriteOp};
use crate::store::{DocError, Store};

/// A shadow run's documents: the serving call's view, this run's writes on top.
pub struct Overlay {
    store: Arc<dyn Store>,
    /// The serving call's first view of each document it touched.
    base: BTreeMap<DocKey, Option<String>>,
    /// Documents as this run has them, once read or written.
    view: BTreeMap<DocKey, Option<String>>,
    /// This run's writes and tasks, in order.
    writes: Vec<Write>,
    /// The serving call's generated document ids, still to hand out.
    generated_ids: VecDeque<String>,
    /// The serving call's task ids, still to hand out.
    task_ids: VecDeque<i64>,
    /// Ids for tasks beyond the serving call's: negative, so never a real task's.
    next_extra_task: i64,
}

impl Overlay {
    /// A view of the documents as the call recorded in `serving` saw them, reading the
    /// others from `store`.
    pub fn new(store: Arc<dyn Store>, serving: &Recording) -> Overlay {
        Overlay {
            store,
            base: serving.seen.clone(),
            view: BTreeMap::new(),
            writes: Vec::new(),
            generated_ids: serving.generated_ids.iter().cloned().collect(),
            task_ids: serving.task_ids.iter().copied().collect(),
            next_extra_task: -1,
        }
    }

    /// This run's writes and tasks, in order.
    pub fn into_writes(self) -> Vec<Write> {
        self.writes
    }

    /// The serving call's next generated document id, if it made one more.
    pub fn next_generated_id(&mut self) -> Option<String> {
        self.generated_ids.pop_front()
    }

    /// The document as this run sees it now.
    pub async fn get(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError> {
        let key = (collection.to_owned(), id.to_owned());
        if let Some(doc) = self.view.get(&key) {
            return Ok(doc.clone());
        }
        let doc = match self.base.get(&key) {
            Some(doc) => doc.clone(),
            None => self.store.get_document(collection, id).await?,
        };
        self.view.insert(key, doc.clone());
        Ok(doc)
    }

    /// `db.insert`: a conflict if the document exists.
    pub async fn insert(
        &mut self,
        collection: &str,
        id: &str,
        data: String,
    ) -> Result<(), DocError> {
        if self.get(collection, id).await?.is_some() {
            return Err(DocError::Conflict(format!("{collection}/{id}")));
        }
        self.write(WriteOp::Insert, collection, id, None, Some(data));
        Ok(())
    }

    /// `db.set`, replacing or merging.
    pub async fn set(
        &mut self,
        collection: &str,
        id: &str,
        fields: Map<String, Value>,
        text: String,
        merge: bool,
    ) -> Result<(), DocError> {
        let before = self.get(collection, id).await?;
        let (op, after) = if merge {
            (WriteOp::Merge, merge_into(before.as_deref(), fields)?)
        } else {
            (WriteOp::Set, text)
        };
        self.write(op, collection, id, before, Some(after));
        Ok(())
    }

    /// `db.inc`, as the database does it: the document and the field are created as
    /// needed; a field that is not an integer, or a sum past 64 bits, is refused.
    pub async fn inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError> {
        let before = self.get(collection, id).await?;
        let mut doc = match before.as_deref().map(serde_json::from_str::<Value>) {
            None => Map::new(),
            Some(Ok(Value::Object(m))) => m,
            Some(_) => {
                return Err(DocError::Invalid(format!(
                    "stored document {collection}/{id} is not a JSON object"
                )))
            }
        };
        let old = match doc.get(field) {
            None => 0,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| DocError::NotANumber(field.to_owned()))?,
        };
        let value = old
            .checked_add(delta)
            .ok_or_else(|| DocError::NotANumber(field.to_owned()))?;
        doc.insert(field.to_owned(), Value::from(value));
        let after = Value::Object(doc).to_string();
        self.write(WriteOp::Inc, collection, id, before, Some(after));
        Ok(value)
    }

    /// `db.delete`: true if the document existed.
    pub async fn delete(&mut self, collection: &str, id: &str) -> Result<bool, DocError> {
        let before = self.get(collection, id).await?;
        if before.is_none() {
            return Ok(false);
        }
        self.write(WriteOp::Delete, collection, id, before, None);
        Ok(true)
    }

    /// `db.query`: the database's answer with every document this view knows in its
    /// place (added, changed or removed as its fields now match or not), by id.
    pub async fn query(
        &mut self,
        collection: &str,
        filters: &[(String, Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, DocError> {
        let known: BTreeMap<&str, &Option<String>> = self
            .base
            .iter()
            .chain(self.view.iter())
            .filter(|((c, _), _)| c == collection)
            .map(|((_, id), doc)| (id.as_str(), doc))
            .collect();
        // Asking for as many more as this view may remove keeps `limit` full.
        let more = u32::try_from(known.len()).unwrap_or(u32::MAX);
        let stored = self
            .store
            .query_documents(collection, filters, limit.saturating_add(more))
            .await?;
        let mut rows: BTreeMap<String, String> = stored
            .into_iter()
            .filter(|(id, _)| !known.contains_key(id.as_str()))
            .collect();
        for (id, doc) in known {
            if let Some(text) = doc.as_deref().filter(|t| matches(t, filters)) {
                rows.insert(id.to_owned(), text.to_owned());
            }
        }
        Ok(rows.into_iter().take(limit as usize).collect())
    }

    /// `tasks.enqueue`: recorded, never enqueued; the serving call's id at the same place.
    pub fn enqueue(&mut self, name: &str, payload: &str) -> i64 {
        let id = self.task_ids.pop_front().unwrap_or_else(|| {
            self.next_extra_task -= 1;
            self.next_extra_task + 1
        });
        self.writes.push(Write {
            op: WriteOp::Task,
            collection: name.to_owned(),
            doc_id: id.to_string(),
            before: None,
            after: Some(payload.to_owned()),
        });
        id
    }

    fn write(
        &mut self,
        op: WriteOp,
        collection: &str,
        id: &str,
        before: Option<String>,
        after: Option<String>,
    ) {
        self.view
            .insert((collection.to_owned(), id.to_owned()), after.clone());
        self.writes.push(Write {
            op,
            collection: collection.to_owned(),
            doc_id: id.to_owned(),
            before,
            after,
        });
    }
}

/// Whether a document's top-level fields equal every filter's value.
fn matches(text: &str, filters: &[(String, Value)]) -> bool {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(doc)) => filters
            .iter()
            .all(|(field, value)| doc.get(field).is_some_and(|v| same_value(v, value))),
        _ => false,
    }
}

/// JSON equality as the database compares values: numbers by value (`1` equals `1.0`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compare_numbers_by_value_and_need_the_field() {
        let f = |k: &str, v: Value| vec![(k.to_owned(), v)];
        assert!(matches(r#"{"a":1}"#, &f("a", Value::from(1.0))));
        assert!(matches(r#"{"a":"x","b":2}"#, &f("a", Value::from("x"))));
        assert!(!matches(r#"{"b":2}"#, &f("a", Value::Null)));
        assert!(!matches(r#"{"a":2}"#, &f("a", Value::from(1))));
    }
}
