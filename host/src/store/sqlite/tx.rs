//! SQLite's payment transaction: [`Tx`] on the held writer (see `writer`), in
//! `BEGIN IMMEDIATE`, each statement the shared one of its concern run synchronously,
//! except the atomic increment (`doc_inc`), which needs SQLite's JSON functions.

use async_trait::async_trait;

use super::writer::{execute, fetch, Held};
use super::{json_path, DOC_INC, SQLITE};
use crate::store::refunds::{self, NewRefund, RefundRecord};
use crate::store::statement::{required, savepoint, Statement};
use crate::store::types::{MarkPaid, NewTask, NotificationVerdict, Order, PaidOrder, Verdict};
use crate::store::{documents, notifications, orders, rows, tasks, DocError, StoreError, Tx};
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

    /// Runs `SAVEPOINT`, `RELEASE SAVEPOINT` or `ROLLBACK TO SAVEPOINT` (`verb`).
    fn savepoint_op(&mut self, verb: &str, name: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(&savepoint(verb, name)?)?;
        Ok(())
    }

    /// A document's JSON text. `BEGIN IMMEDIATE` already holds the database write
    /// lock, so this is also the locked read of a read-modify-write.
    fn select_doc(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError> {
        let st = documents::select(&SQLITE, collection, id, "");
        let found = fetch(&self.conn, &st, |r| r.text("data"))?;
        Ok(found.into_iter().next().flatten())
    }

    /// The `INSERT` of a document; how many rows it wrote.
    fn write_doc(
        &mut self,
        collection: &str,
        id: &str,
        data: &str,
        on_conflict: &str,
    ) -> Result<u64, DocError> {
        let st = documents::write(&SQLITE, collection, id, data, on_conflict)?;
        Ok(execute(&self.conn, &st)?)
    }
}

#[async_trait]
impl Tx for SqliteTx {
    async fn savepoint(&mut self, name: &str) -> Result<(), StoreError> {
        self.savepoint_op("SAVEPOINT", name)
    }

    async fn release(&mut self, name: &str) -> Result<(), StoreError> {
        self.savepoint_op("RELEASE SAVEPOINT", name)
    }

    async fn rollback_to(&mut self, name: &str) -> Result<(), StoreError> {
        self.savepoint_op("ROLLBACK TO SAVEPOINT", name)?;
        self.savepoint_op("RELEASE SAVEPOINT", name)
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }

    async fn lock_order(&mut self, out_trade_no: &str) -> Result<Option<Order>, StoreError> {
        // BEGIN IMMEDIATE already holds the database write lock.
        match orders::select_order(out_trade_no, SQLITE.for_update) {
            Some(st) => Ok(fetch(&self.conn, &st, rows::order_row)?.pop()),
            None => Ok(None),
        }
    }

    async fn mark_paid(&mut self, paid: &MarkPaid<'_>) -> Result<bool, StoreError> {
        Ok(execute(&self.conn, &orders::mark_paid(paid))? == 1)
    }

    async fn lock_orders(&mut self, out_trade_nos: &[&str]) -> Result<Vec<Order>, StoreError> {
        let Some(st) = orders::lock_orders(out_trade_nos, SQLITE.for_update) else {
            return Ok(Vec::new());
        };
        fetch(&self.conn, &st, rows::order_row)
    }

    async fn settle_paid(&mut self, paid: &[PaidOrder]) -> Result<u64, StoreError> {
        if paid.is_empty() {
            return Ok(0);
        }
        let mut st = Statement::build();
        orders::push_settle_paid(&mut st, paid);
        execute(&self.conn, &st)
    }

    async fn finish_notifications(
        &mut self,
        rows: &[NotificationVerdict<'_>],
    ) -> Result<(), StoreError> {
        if !rows.is_empty() {
            let mut st = Statement::build();
            notifications::push_finish_notifications(&mut st, rows);
            execute(&self.conn, &st)?;
        }
        Ok(())
    }

    async fn set_handler_result(
        &mut self,
        out_trade_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError> {
        execute(
            &self.conn,
            &orders::set_handler_result(out_trade_no, handler_status, result, handler_version),
        )
        .map(drop)
    }

    async fn finish_notification(
        &mut self,
        id: i64,
        verdict: Verdict,
        reason: Option<&str>,
        out_trade_no: Option<&str>,
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        execute(
            &self.conn,
            &notifications::finish_notification(id, verdict, reason, out_trade_no, account),
        )
        .map(drop)
    }

    async fn doc_get(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError> {
        self.select_doc(collection, id)
    }

    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError> {
        self.select_doc(collection, id)
    }

    async fn doc_insert(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        let changed = self.write_doc(collection, id, data, documents::KEEP)?;
        documents::inserted(changed, collection, id)
    }

    async fn doc_put(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        self.write_doc(collection, id, data, documents::REPLACE)
            .map(drop)
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

    async fn doc_delete(&mut self, collection: &str, id: &str) -> Result<bool, DocError> {
        Ok(execute(&self.conn, &documents::delete(collection, id))? == 1)
    }

    async fn doc_query(
        &mut self,
        collection: &str,
        filters: &[(String, serde_json::Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, DocError> {
        let Some(st) = documents::query(&SQLITE, collection, filters, limit) else {
            return Ok(Vec::new());
        };
        Ok(fetch(&self.conn, &st, documents::id_and_data)?)
    }

    async fn enqueue_task(&mut self, task: &NewTask) -> Result<i64, StoreError> {
        let mut id = fetch(&self.conn, &tasks::enqueue_task(task), |r| {
            required(r.int8("id")?, "id")
        })?;
        id.pop()
            .ok_or_else(|| StoreError::Invalid("task insert returned no id".into()))
    }

    async fn get_refund(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        let st = refunds::select_refund(out_trade_no, out_refund_no);
        Ok(fetch(&self.conn, &st, refunds::refund_row)?.pop())
    }

    async fn apply_refund(&mut self, refund: &NewRefund<'_>) -> Result<bool, StoreError> {
        let inserted = execute(&self.conn, &refunds::insert_refund(refund))?;
        if inserted != 1 {
            return Ok(false);
        }
        refunds::added(execute(&self.conn, &refunds::add_to_order(refund))?, refund)
    }

    async fn set_refund_handler_result(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError> {
        let st = refunds::set_refund_handler_result(
            out_trade_no,
            out_refund_no,
            handler_status,
            result,
            handler_version,
        );
        execute(&self.conn, &st).map(drop)
    }
}
