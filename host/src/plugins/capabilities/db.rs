//! `db`: JSON documents in the collections the manifest grants, in the call's transaction
//! (or, for `run-task`, one short transaction per operation; or, in a shadow run, a view
//! that never commits: [`super::overlay`]). Writes are recorded when the call records
//! ([`super::record`]).
//!
//! Configure: `collections` must be valid names. Prepare: [`DbAccess`] via
//! [`CallBuilder::db`](super::CallBuilder::db). Link: interface `db`.

use wasmtime::component::{HasSelf, Linker};

use super::{CallContext, Capability, DbAccess, Getter};
use crate::plugins::manifest::Manifest;
use crate::plugins::world::since_v0_1::bindings::paynotify::plugin::db as wit;
use crate::store::audit::{Write, WriteOp};
use crate::store::DocError;

/// Largest JSON document (or task payload) a handler may write.
pub(super) const MAX_JSON_BYTES: usize = 256 * 1024;
/// Most documents one query returns.
const MAX_QUERY_LIMIT: u32 = 1000;

/// The `db` capability.
pub(super) struct Db;

impl Capability for Db {
    fn configure(manifest: &Manifest) -> Result<(), String> {
        for c in &manifest.collections {
            if !crate::names::valid_collection(c) {
                return Err(format!(
                    "key `collections`: `{c}` is not a valid collection name (letters, digits, - and _)"
                ));
            }
        }
        Ok(())
    }

    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: Getter<T>) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<CallContext>>(linker, get)
    }
}

/// Runs one document operation in the call's transaction (or its own), mapping errors
/// the way the handler should see them.
macro_rules! doc_op {
    ($ctx:expr, |$tx:ident| $body:expr) => {{
        let result = match $ctx.op_tx().await {
            Ok(mut op) => {
                let r = {
                    let $tx = op.tx();
                    $body.await
                };
                op.end(r).await
            }
            Err(e) => Err(DocError::Store(e)),
        };
        result.map_err(|e| $ctx.doc_error(e))
    }};
}

/// [`doc_op!`] for a write whose body answers `(value, Option<Write>)`: the write is
/// recorded for the audit (in the operation's own transaction when it has one) and kept
/// in the call's recording.
macro_rules! doc_write {
    ($ctx:expr, |$tx:ident| $body:expr) => {{
        let each = $ctx.audit_each_row();
        let result = match $ctx.op_tx().await {
            Ok(mut op) => {
                let r = {
                    let $tx = op.tx();
                    $body.await
                };
                op.end_write(r, each).await
            }
            Err(e) => Err(DocError::Store(e)),
        };
        match result {
            Ok((value, write)) => {
                $ctx.recorded(write);
                Ok(value)
            }
            Err(e) => Err($ctx.doc_error(e)),
        }
    }};
}

impl CallContext {
    fn collection(&self, name: &str) -> Result<(), wit::DbError> {
        valid(
            crate::names::valid_collection(name),
            name,
            "collection name",
        )?;
        if !self.manifest.grants_collection(name) {
            return Err(wit::DbError::Denied(format!(
                "collection `{name}` is not granted to plugin `{}` (add it to `collections` in {}.toml)",
                self.tags.plugin, self.tags.plugin
            )));
        }
        Ok(())
    }

    /// Checks a document's address: the collection's grant first, then the id.
    fn document(&self, collection: &str, id: &str) -> Result<(), wit::DbError> {
        self.collection(collection)?;
        doc_id(id)
    }

    fn doc_error(&mut self, e: DocError) -> wit::DbError {
        match e {
            DocError::Conflict(m) => wit::DbError::Conflict(m),
            DocError::NotANumber(f) => {
                wit::DbError::NotANumber(format!("field `{f}` is not an integer"))
            }
            DocError::Invalid(m) => wit::DbError::Invalid(m),
            DocError::Store(e) => {
                self.poison_store(&e);
                wit::DbError::Backend(e.to_string())
            }
        }
    }
}

/// Parses a JSON object given by a handler, returning its compact text.
fn json_object(
    text: &str,
) -> Result<(serde_json::Map<String, serde_json::Value>, String), wit::DbError> {
    if text.len() > MAX_JSON_BYTES {
        return Err(wit::DbError::Invalid(format!(
            "document is over {MAX_JSON_BYTES} bytes"
        )));
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => {
            let compact = serde_json::Value::Object(map.clone()).to_string();
            Ok((map, compact))
        }
        Ok(_) => Err(wit::DbError::Invalid(
            "a document must be a JSON object".into(),
        )),
        Err(e) => Err(wit::DbError::Invalid(format!("invalid JSON: {e}"))),
    }
}

fn doc_id(id: &str) -> Result<(), wit::DbError> {
    valid(crate::names::valid_doc_id(id), id, "document id")
}

fn field(name: &str) -> Result<(), wit::DbError> {
    valid(crate::names::valid_field(name), name, "field name")
}

/// `name` refused as `invalid` unless it is `valid`.
fn valid(valid: bool, name: &str, what: &str) -> Result<(), wit::DbError> {
    if valid {
        Ok(())
    } else {
        Err(wit::DbError::Invalid(format!(
            "`{name}` is not a valid {what}"
        )))
    }
}

impl wit::Host for CallContext {
    async fn get(
        &mut self,
        collection: String,
        id: String,
    ) -> Result<Option<String>, wit::DbError> {
        self.document(&collection, &id)?;
        if let DbAccess::Shadow(view) = &mut self.db {
            let r = view.get(&collection, &id).await;
            return r.map_err(|e| self.doc_error(e));
        }
        let found = doc_op!(self, |tx| tx.doc_get(&collection, &id))?;
        if let Some(r) = &mut self.record {
            r.saw((collection, id), found.clone());
        }
        Ok(found)
    }

    async fn insert(
        &mut self,
        collection: String,
        id: Option<String>,
        data: String,
    ) -> Result<String, wit::DbError> {
        let id = match id {
            Some(id) => id,
            None => self.generate_id(),
        };
        self.document(&collection, &id)?;
        let (_, data) = json_object(&data)?;
        if let DbAccess::Shadow(view) = &mut self.db {
            let r = view.insert(&collection, &id, data).await;
            return r.map(|()| id).map_err(|e| self.doc_error(e));
        }
        let record = self.record.is_some();
        doc_write!(self, |tx| async {
            tx.doc_insert(&collection, &id, &data).await?;
            let write = record.then(|| Write {
                op: WriteOp::Insert,
                collection: collection.clone(),
                doc_id: id.clone(),
                before: None,
                after: Some(data.clone()),
            });
            Ok(((), write))
        })
        .map(|()| id)
    }

    async fn set(
        &mut self,
        collection: String,
        id: String,
        data: String,
        merge: bool,
    ) -> Result<(), wit::DbError> {
        self.document(&collection, &id)?;
        let (fields, text) = json_object(&data)?;
        if let DbAccess::Shadow(view) = &mut self.db {
            let r = view.set(&collection, &id, fields, text, merge).await;
            return r.map_err(|e| self.doc_error(e));
        }
        let record = self.record.is_some();
        let write = |op, before, after: String| {
            record.then(|| Write {
                op,
                collection: collection.clone(),
                doc_id: id.clone(),
                before,
                after: Some(after),
            })
        };
        if !merge {
            return doc_write!(self, |tx| async {
                if record {
                    let before = tx.doc_put_audited(&collection, &id, &text).await?;
                    Ok(((), write(WriteOp::Set, before, text.clone())))
                } else {
                    tx.doc_put(&collection, &id, &text).await?;
                    Ok(((), None))
                }
            });
        }
        // Read-modify-write in one transaction: it holds the write lock (SQLite) or the
        // row lock (PostgreSQL `doc_get_for_update`) until it ends.
        doc_write!(self, |tx| async {
            let current = tx.doc_get_for_update(&collection, &id).await?;
            let merged = merge_into(current.as_deref(), fields)?;
            tx.doc_put(&collection, &id, &merged).await?;
            Ok(((), write(WriteOp::Merge, current, merged)))
        })
    }

    async fn inc(
        &mut self,
        collection: String,
        id: String,
        field_name: String,
        delta: i64,
    ) -> Result<i64, wit::DbError> {
        self.document(&collection, &id)?;
        field(&field_name)?;
        if let DbAccess::Shadow(view) = &mut self.db {
            let r = view.inc(&collection, &id, &field_name, delta).await;
            return r.map_err(|e| self.doc_error(e));
        }
        let record = self.record.is_some();
        doc_write!(self, |tx| async {
            if !record {
                let value = tx.doc_inc(&collection, &id, &field_name, delta).await?;
                return Ok((value, None));
            }
            let inc = tx
                .doc_inc_audited(&collection, &id, &field_name, delta)
                .await?;
            let write = Write {
                op: WriteOp::Inc,
                collection: collection.clone(),
                doc_id: id.clone(),
                before: inc.before,
                after: Some(inc.after),
            };
            Ok((inc.value, Some(write)))
        })
    }

    async fn delete(&mut self, collection: String, id: String) -> Result<bool, wit::DbError> {
        self.document(&collection, &id)?;
        if let DbAccess::Shadow(view) = &mut self.db {
            let r = view.delete(&collection, &id).await;
            return r.map_err(|e| self.doc_error(e));
        }
        let record = self.record.is_some();
        doc_write!(self, |tx| async {
            if !record {
                return Ok((tx.doc_delete(&collection, &id).await?, None));
            }
            let before = tx.doc_delete_audited(&collection, &id).await?;
            let write = before.map(|before| Write {
                op: WriteOp::Delete,
                collection: collection.clone(),
                doc_id: id.clone(),
                before: Some(before),
                after: None,
            });
            Ok((write.is_some(), write))
        })
    }

    async fn query(
        &mut self,
        collection: String,
        filters: Vec<(String, String)>,
        limit: u32,
    ) -> Result<Vec<wit::Document>, wit::DbError> {
        self.collection(&collection)?;
        let mut parsed = Vec::with_capacity(filters.len());
        for (name, value) in filters {
            field(&name)?;
            let value = serde_json::from_str(&value).map_err(|e| {
                wit::DbError::Invalid(format!("filter on `{name}` is not JSON: {e}"))
            })?;
            parsed.push((name, value));
        }
        let limit = limit.clamp(1, MAX_QUERY_LIMIT);
        let rows = if let DbAccess::Shadow(view) = &mut self.db {
            let r = view.query(&collection, &parsed, limit).await;
            r.map_err(|e| self.doc_error(e))?
        } else {
            doc_op!(self, |tx| tx.doc_query(&collection, &parsed, limit))?
        };
        if let Some(r) = &mut self.record {
            for (id, data) in &rows {
                r.saw((collection.clone(), id.clone()), Some(data.clone()));
            }
        }
        Ok(rows
            .into_iter()
            .map(|(id, data)| wit::Document { id, data })
            .collect())
    }
}

/// `fields` merged into the stored document `current` (absent: an empty one), as JSON
/// text within the size limit.
pub(super) fn merge_into(
    current: Option<&str>,
    fields: serde_json::Map<String, serde_json::Value>,
) -> Result<String, DocError> {
    let mut merged = match current.map(serde_json::from_str) {
        Some(Ok(serde_json::Value::Object(m))) => m,
        Some(Err(e)) => {
            return Err(DocError::Invalid(format!(
                "stored document is corrupt: {e}"
            )))
        }
        _ => serde_json::Map::new(),
    };
    merged.extend(fields);
    let text = serde_json::Value::Object(merged).to_string();
    if text.len() > MAX_JSON_BYTES {
        return Err(DocError::Invalid(format!(
            "merged document is over {MAX_JSON_BYTES} bytes"
        )));
    }
    Ok(text)
}
