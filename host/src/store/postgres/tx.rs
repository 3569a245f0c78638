//! PostgreSQL's payment transaction: [`Tx`] on a kept connection (see `kept`), every
//! statement the shared one of its concern, except the two that need PostgreSQL's own
//! SQL: the atomic increment (`doc_inc`) and the merge lock (`doc_get_for_update`).

use async_trait::async_trait;
use sqlx::Executor;

use super::kept::Kept;
use super::{execute, fetch, POSTGRES};
use crate::store::refunds::{self, NewRefund, RefundRecord};
use crate::store::statement::{required, savepoint, Statement};
use crate::store::types::{MarkPaid, NewTask, NotificationVerdict, Order, PaidOrder, Verdict};
use crate::store::{documents, notifications, orders, rows, tasks, DocError, StoreError, Tx};
use crate::time::now_ms;

/// An open PostgreSQL transaction.
pub(super) struct PgTx {
    tx: Kept,
}

impl PgTx {
    /// The transaction `BEGIN` opened on `tx`.
    pub(super) fn new(tx: Kept) -> Self {
        PgTx { tx }
    }

    /// Runs `SAVEPOINT`, `RELEASE SAVEPOINT` or `ROLLBACK TO SAVEPOINT` (`verb`).
    async fn savepoint_op(&mut self, verb: &str, name: &str) -> Result<(), StoreError> {
        (&mut *self.tx)
            .execute(savepoint(verb, name)?.as_str())
            .await?;
        Ok(())
    }

    /// The `INSERT` of a document, refused up front if PostgreSQL cannot store it; true
    /// if a row was written.
    async fn write_document(
        &mut self,
        collection: &str,
        id: &str,
        data: &str,
        on_conflict: &str,
    ) -> Result<u64, DocError> {
        let st = documents::write(&POSTGRES, collection, id, data, on_conflict)?;
        Ok(execute(&mut self.tx, &st).await?)
    }
}

/// How often `doc_get_for_update` retries when the document is deleted between its two
/// statements (each retry needs another transaction to delete it again).
const LOCK_ATTEMPTS: usize = 3;

#[async_trait]
impl Tx for PgTx {
    async fn savepoint(&mut self, name: &str) -> Result<(), StoreError> {
        self.savepoint_op("SAVEPOINT", name).await
    }

    async fn release(&mut self, name: &str) -> Result<(), StoreError> {
        self.savepoint_op("RELEASE SAVEPOINT", name).await
    }

    async fn rollback_to(&mut self, name: &str) -> Result<(), StoreError> {
        self.savepoint_op("ROLLBACK TO SAVEPOINT", name).await?;
        self.savepoint_op("RELEASE SAVEPOINT", name).await
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn lock_order(&mut self, out_trade_no: &str) -> Result<Option<Order>, StoreError> {
        let Some(st) = orders::select_order(out_trade_no, POSTGRES.for_update) else {
            return Ok(None);
        };
        Ok(fetch(&mut self.tx, &st, rows::order_row).await?.pop())
    }

    async fn mark_paid(&mut self, paid: &MarkPaid<'_>) -> Result<bool, StoreError> {
        Ok(execute(&mut self.tx, &orders::mark_paid(paid)).await? == 1)
    }

    async fn lock_orders(&mut self, out_trade_nos: &[&str]) -> Result<Vec<Order>, StoreError> {
        match orders::lock_orders(out_trade_nos, POSTGRES.for_update) {
            Some(st) => fetch(&mut self.tx, &st, rows::order_row).await,
            None => Ok(Vec::new()),
        }
    }

    async fn settle_paid(&mut self, paid: &[PaidOrder]) -> Result<u64, StoreError> {
        if paid.is_empty() {
            return Ok(0);
        }
        let mut st = Statement::build();
        orders::push_settle_paid(&mut st, paid);
        execute(&mut self.tx, &st).await
    }

    async fn finish_notifications(
        &mut self,
        rows: &[NotificationVerdict<'_>],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut st = Statement::build();
        notifications::push_finish_notifications(&mut st, rows);
        execute(&mut self.tx, &st).await?;
        Ok(())
    }

    /// Both statements as one (two data-modifying CTEs): a round trip less per batch,
    /// on the serial path of every settle loop.
    async fn settle(
        &mut self,
        paid: &[PaidOrder],
        rows: &[NotificationVerdict<'_>],
    ) -> Result<u64, StoreError> {
        if paid.is_empty() || rows.is_empty() {
            // An empty `VALUES` list is not SQL; each of these skips its statement when
            // its list is empty (a batch with no payment still records its verdicts).
            let marked = self.settle_paid(paid).await?;
            self.finish_notifications(rows).await?;
            return Ok(marked);
        }
        let mut st = Statement::build();
        st.push("WITH paid AS (");
        orders::push_settle_paid(&mut st, paid);
        st.push(" RETURNING 1), done AS (");
        notifications::push_finish_notifications(&mut st, rows);
        st.push(") SELECT count(*) AS n FROM paid");
        let marked = fetch(&mut self.tx, &st, |r| required(r.int8("n")?, "n")).await?;
        Ok(u64::try_from(marked.into_iter().next().unwrap_or_default()).unwrap_or_default())
    }

    async fn set_handler_result(
        &mut self,
        out_trade_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError> {
        let st = orders::set_handler_result(out_trade_no, handler_status, result, handler_version);
        execute(&mut self.tx, &st).await?;
        Ok(())
    }

    async fn finish_notification(
        &mut self,
        id: i64,
        verdict: Verdict,
        reason: Option<&str>,
        out_trade_no: Option<&str>,
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        let st = notifications::finish_notification(id, verdict, reason, out_trade_no, account);
        execute(&mut self.tx, &st).await?;
        Ok(())
    }

    async fn doc_get(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError> {
        let st = documents::select(&POSTGRES, collection, id, "");
        let found = fetch(&mut self.tx, &st, |r| r.text("data")).await?;
        Ok(found.into_iter().next().flatten())
    }

    /// Locks the document for a read-modify-write (`set` with merge) until the
    /// transaction ends.
    ///
    /// `SELECT … FOR UPDATE` alone cannot lock a document that does not exist: two
    /// merges into an absent document would both read "absent", both write only their
    /// own fields, and the later commit would overwrite the earlier one's. So a row is
    /// made to exist first: `INSERT '{}' … ON CONFLICT DO NOTHING`.
    ///
    /// - If it inserted, this transaction holds the new row's unique-index entry: any
    ///   other transaction inserting or upserting the same document (a merge here,
    ///   `doc_inc`, `doc_put`, `doc_insert`) waits until this one ends, then sees its
    ///   committed result. The document was absent: `None`, and the caller's write
    ///   replaces the `{}` (a caller that writes nothing leaves `{}` behind).
    /// - If it did nothing, the row existed (or another transaction that inserted it
    ///   has just committed: the INSERT waited for it), and `SELECT … FOR UPDATE`
    ///   locks it and returns its latest committed version.
    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError> {
        for _ in 0..LOCK_ATTEMPTS {
            if self
                .write_document(collection, id, "{}", documents::KEEP)
                .await?
                == 1
            {
                return Ok(None);
            }
            let st = documents::select(&POSTGRES, collection, id, POSTGRES.for_update);
            let found = fetch(&mut self.tx, &st, |r| r.text("data")).await?;
            if let Some(text) = found.into_iter().next().flatten() {
                return Ok(Some(text));
            }
            // Deleted (and committed) between the two statements: make it exist again.
        }
        Err(DocError::Invalid(format!(
            "document {collection}/{id} is being deleted and re-created concurrently; try again"
        )))
    }

    async fn doc_insert(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        let changed = self
            .write_document(collection, id, data, documents::KEEP)
            .await?;
        documents::inserted(changed, collection, id)
    }

    async fn doc_put(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        self.write_document(collection, id, data, documents::REPLACE)
            .await?;
        Ok(())
    }

    /// One statement: create the document with the field, or add to the field if it is
    /// absent or an integer. The `WHERE` of `DO UPDATE` refuses anything else, and a
    /// sum outside 64 bits, without an error (no row comes back): a failed statement
    /// would abort the transaction. (`CASE` because SQL does not promise to evaluate
    /// `AND` left to right, and `::numeric` of a non-number would raise.)
    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError> {
        let st = Statement::new(
            "INSERT INTO documents AS d (collection, id, data, created_at, updated_at) \
             VALUES ($1, $2, jsonb_build_object($3::text, $4::bigint), $5, $5) \
             ON CONFLICT (collection, id) DO UPDATE SET \
               data = jsonb_set(d.data, ARRAY[$3::text], \
                                to_jsonb(COALESCE((d.data -> $3::text)::numeric, 0) + $4::bigint)), \
               updated_at = $5 \
             WHERE CASE jsonb_typeof(d.data -> $3::text) \
                     WHEN 'number' THEN scale((d.data -> $3::text)::numeric) = 0 \
                       AND (d.data -> $3::text)::numeric + $4::bigint \
                           BETWEEN -9223372036854775808 AND 9223372036854775807 \
                     ELSE d.data -> $3::text IS NULL \
                   END \
             RETURNING (d.data -> $3::text)::bigint AS value",
        )
        .bind(collection)
        .bind(id)
        .bind(field)
        .bind(delta)
        .bind(now_ms());
        let value = fetch(&mut self.tx, &st, |r| r.int8("value")).await?;
        value
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| DocError::NotANumber(field.to_owned()))
    }

    async fn doc_delete(&mut self, collection: &str, id: &str) -> Result<bool, DocError> {
        Ok(execute(&mut self.tx, &documents::delete(collection, id)).await? == 1)
    }

    async fn doc_query(
        &mut self,
        collection: &str,
        filters: &[(String, serde_json::Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, DocError> {
        match documents::query(&POSTGRES, collection, filters, limit) {
            Some(st) => Ok(fetch(&mut self.tx, &st, documents::id_and_data).await?),
            // No stored document can hold that value.
            None => Ok(Vec::new()),
        }
    }

    async fn enqueue_task(&mut self, task: &NewTask) -> Result<i64, StoreError> {
        let id = fetch(&mut self.tx, &tasks::enqueue_task(task), |r| {
            required(r.int8("id")?, "id")
        })
        .await?;
        id.into_iter()
            .next()
            .ok_or_else(|| StoreError::Invalid("task insert returned no id".into()))
    }

    async fn get_refund(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        let st = refunds::select_refund(out_trade_no, out_refund_no);
        Ok(fetch(&mut self.tx, &st, refunds::refund_row).await?.pop())
    }

    async fn apply_refund(&mut self, refund: &NewRefund<'_>) -> Result<bool, StoreError> {
        if execute(&mut self.tx, &refunds::insert_refund(refund)).await? != 1 {
            return Ok(false);
        }
        let changed = execute(&mut self.tx, &refunds::add_to_order(refund)).await?;
        refunds::added(changed, refund)
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
        execute(&mut self.tx, &st).await?;
        Ok(())
    }
}
