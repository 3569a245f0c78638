//! Handler documents in SQL (`documents`: JSON by collection and id), the statements of
//! the `db` capability that both backends share. The atomic increment and the merge
//! lock differ too much and live with each backend's transaction.

use super::statement::{required, Columns, Dialect, Statement};
use super::{DocError, StoreError};
use crate::time::now_ms;

/// `doc_put`'s conflict clause: replace the document.
pub(crate) const REPLACE: &str =
    "DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at";

/// `doc_insert`'s conflict clause: keep the existing document (and report a conflict).
/// Not a unique violation: on PostgreSQL a failed statement would abort the whole
/// transaction, and a handler must be able to go on after a conflict.
pub(crate) const KEEP: &str = "DO NOTHING";

/// A document's JSON text (as `data`), with the row lock `lock` (`""` or the dialect's
/// `for_update`).
pub(crate) fn select<'a>(
    d: &Dialect,
    collection: &'a str,
    id: &'a str,
    lock: &str,
) -> Statement<'a> {
    Statement::new(format!(
        "SELECT {} AS data FROM documents WHERE collection = $1 AND id = $2{lock}",
        d.doc_text
    ))
    .bind(collection)
    .bind(id)
}

/// `INSERT` of a document with `on_conflict` ([`REPLACE`] or [`KEEP`]); changes one row
/// if it wrote. Refuses, before the database does, what the backend cannot store: a
/// failed statement would abort a PostgreSQL transaction.
pub(crate) fn write<'a>(
    d: &Dialect,
    collection: &'a str,
    id: &'a str,
    data: &'a str,
    on_conflict: &str,
) -> Result<Statement<'a>, DocError> {
    if d.json_refuses_nul && json_has_nul(data) {
        return Err(DocError::Invalid(
            "this database cannot store NUL (\\u0000) in a document".into(),
        ));
    }
    Ok(Statement::new(format!(
        "INSERT INTO documents (collection, id, data, created_at, updated_at) \
         VALUES ($1, $2, $3{}, $4, $4) ON CONFLICT (collection, id) {on_conflict}",
        d.json_param
    ))
    .bind(collection)
    .bind(id)
    .bind(data)
    .bind(now_ms()))
}

/// What `doc_insert` answers after [`write`] with [`KEEP`] changed `changed` rows.
pub(crate) fn inserted(changed: u64, collection: &str, id: &str) -> Result<(), DocError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(DocError::Conflict(format!("{collection}/{id}")))
    }
}

/// Deletes one document.
pub(crate) fn delete<'a>(collection: &'a str, id: &'a str) -> Statement<'a> {
    Statement::new("DELETE FROM documents WHERE collection = $1 AND id = $2")
        .bind(collection)
        .bind(id)
}

/// Deletes one document, answering its JSON text (as `data`) if there was one.
pub(crate) fn delete_returning<'a>(d: &Dialect, collection: &'a str, id: &'a str) -> Statement<'a> {
    Statement::new(format!(
        "DELETE FROM documents WHERE collection = $1 AND id = $2 RETURNING {} AS data",
        d.doc_text
    ))
    .bind(collection)
    .bind(id)
}

/// Documents of `collection` whose top-level fields equal the filters' JSON values, by
/// id, at most `limit`, as (`id`, `data`). `None` when a value holds NUL on a backend
/// that cannot store it: no document can match.
pub(crate) fn query<'a>(
    d: &Dialect,
    collection: &'a str,
    filters: &[(String, serde_json::Value)],
    limit: u32,
) -> Option<Statement<'a>> {
    if d.json_refuses_nul && filters.iter().any(|(_, v)| json_has_nul(&v.to_string())) {
        return None;
    }
    let mut text = format!(
        "SELECT id, {} AS data FROM documents WHERE collection = $1",
        d.doc_text
    );
    for i in 0..filters.len() {
        text.push_str(" AND ");
        text.push_str(&(d.doc_filter)(2 + 2 * i));
    }
    text.push_str(&format!(" ORDER BY id LIMIT ${}", 2 + 2 * filters.len()));
    let mut st = Statement::new(text).bind(collection);
    for (field, value) in filters {
        st = st.bind((d.field_param)(field)).bind(value.to_string());
    }
    Some(st.bind(i64::from(limit)))
}

/// A row of [`query`].
pub(crate) fn id_and_data(r: &dyn Columns) -> Result<(String, String), StoreError> {
    Ok((
        required(r.text("id")?, "id")?,
        required(r.text("data")?, "data")?,
    ))
}

/// True if JSON text has a string (or key) containing NUL, which `jsonb` refuses.
fn json_has_nul(text: &str) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(walk),
            serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || walk(v)),
            _ => false,
        }
    }
    // Only a `\u0000` escape can put NUL in JSON text; parse only when one may be there.
    text.contains("\\u0000") && serde_json::from_str(text).is_ok_and(|v| walk(&v))
}
