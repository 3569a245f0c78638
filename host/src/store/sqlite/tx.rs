//! SQLite's payment transaction: the [`TxConn`] seam on the held writer (see
//! `writer.rs`), in `BEGIN IMMEDIATE`, each statement run synchronously, so
//! [`Tx`](crate::store::Tx) is the shared one; plus the atomic increment (`doc_inc`),
//! which needs SQLite's JSON functions.

use async_trait::async_trait;

use super::writer::{execute, fetch, Held};
use super::{json_path, DOC_INC, SQLITE};
use crate::store::statement::{savepoint, Dialect, RowMap, Statement};
use crate::store::tx::{select_doc, TxConn};
use crate::store::{DocError, StoreError};
use crate::time::now_ms;

/// An open write transaction on the writer. Dropping it without [`Tx::commit`] rolls
/// it back (at once, on the dropping thread) and frees the writer.
pub(super) struct SqliteTx {
    conn: Held,
    open: bool,
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "rollback of an abandoned SQLite transaction failed");
            }
        }
    }
}

impl SqliteTx {
    /// The transaction `BEGIN IMMEDIATE` opened on the held writer.
    pub(super) fn new(conn: Held) -> Self {
        SqliteTx { conn, open: true }
    }
}

#[async_trait]
impl TxConn for SqliteTx {
    fn dialect(&self) -> &'static Dialect {
        &SQLITE
    }

    async fn fetch<T: Send + 'static>(
        &mut self,
        st: &Statement<'_>,
        map: RowMap<T>,
    ) -> Result<Vec<T>, StoreError> {
        fetch(&self.conn, st, map)
    }

    async fn execute(&mut self, st: &Statement<'_>) -> Result<u64, StoreError> {
        execute(&self.conn, st)
    }

    async fn savepoint_op(&mut self, verb: &str, name: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(&savepoint(verb, name)?)?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }

    /// `BEGIN IMMEDIATE` already holds the database write lock: a plain read is the
    /// locked read of a read-modify-write.
    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError> {
        select_doc(self, collection, id, "").await
    }

    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError> {
        let st = Statement::new(DOC_INC)
            .bind(collection)
            .bind(id)
            .bind(field)
            .bind(delta)
            .bind(json_path(field))
            .bind(now_ms());
        let value = fetch(&self.conn, &st, |r| r.int8("value"))?;
        value
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| DocError::NotANumber(field.to_owned()))
    }
}
