//! What a handler call read and wrote: the write audit's rows, and what a shadow run of a
//! candidate build needs to see the documents as the serving build saw them.
//!
//! Recording is on for a call when the audit is, or when its type has a candidate to
//! shadow. It costs the "before" image of each write (on PostgreSQL a locked read before a
//! `set`, and nothing extra for `inc`, `delete` and `insert`), kept in memory until the
//! pipeline writes the call's rows with its transaction.

use std::collections::BTreeMap;

use crate::store::audit::{Write, WriteOp};

/// A document's address: collection and id.
pub type DocKey = (String, String);

/// What one handler call read and wrote, in order.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The first state the call saw of each document it touched (read, queried or
    /// wrote): the document as it was before the call (`None`: absent).
    pub seen: BTreeMap<DocKey, Option<String>>,
    /// Every write and enqueued task, in the order made.
    pub writes: Vec<Write>,
    /// Ids the host generated for `db.insert` without an id, in order: a shadow run of
    /// the same call gets the same ones, so its inserts compare with these.
    pub generated_ids: Vec<String>,
    /// Ids of the tasks enqueued, in order: a shadow run's enqueues answer these.
    pub task_ids: Vec<i64>,
}

impl Recording {
    /// Notes that the call saw `key` as `value`, unless it saw it earlier.
    pub fn saw(&mut self, key: DocKey, value: Option<String>) {
        self.seen.entry(key).or_insert(value);
    }

    /// Keeps a write (a task's too); a document write's "before" is also a first state
    /// seen.
    pub fn push(&mut self, write: Write) {
        if write.op == WriteOp::Task {
            if let Ok(id) = write.doc_id.parse() {
                self.task_ids.push(id);
            }
        } else {
            let key = (write.collection.clone(), write.doc_id.clone());
            self.saw(key, write.before.clone());
        }
        self.writes.push(write);
    }
}
