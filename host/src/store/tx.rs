//! The payment transaction, written once: [`Tx`] for every backend's open transaction
//! through the small [`TxConn`] seam (run one statement, run a savepoint verb, commit),
//! as [`Sql`](super::statement::Sql) does outside transactions. What a backend does its
//! own way stays with it: the atomic increment, the locked read of a document, and
//! (PostgreSQL) the end of a batch in one statement.

use async_trait::async_trait;

use super::audit::{self, CallWrites, Incremented};
use super::payments::{self, NewRefundRequest, Reservation};
use super::refunds::{self, NewRefund, RefundRecord};
use super::rows::order_row;
use super::statement::{required, Dialect, RowMap, Statement};
use super::traits::Tx;
use super::types::{MarkPaid, NewTask, NotificationVerdict, Order, PaidOrder, Verdict};
use super::{documents, notifications, orders, tasks, DocError, StoreError};

/// An open transaction as the shared statements see it.
#[async_trait]
pub(crate) trait TxConn: Send {
    /// The fragments in which its SQL differs.
    fn dialect(&self) -> &'static Dialect;
    /// Runs a statement that returns rows, mapping each with `map`.
    async fn fetch<T: Send + 'static>(
        &mut self,
        st: &Statement<'_>,
        map: RowMap<T>,
    ) -> Result<Vec<T>, StoreError>;
    /// Runs a statement; how many rows it changed.
    async fn execute(&mut self, st: &Statement<'_>) -> Result<u64, StoreError>;
    /// Runs `SAVEPOINT`, `RELEASE SAVEPOINT` or `ROLLBACK TO SAVEPOINT` (`verb`) `name`.
    async fn savepoint_op(&mut self, verb: &str, name: &str) -> Result<(), StoreError>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// [`Tx::settle`]: marks the batch's orders paid, records its verdicts, then its
    /// handlers' writes.
    async fn settle(
        &mut self,
        paid: &[PaidOrder],
        rows: &[NotificationVerdict<'_>],
        writes: &[CallWrites],
    ) -> Result<u64, StoreError> {
        let marked = settle_paid(self, paid).await?;
        finish_notifications(self, rows).await?;
        record_writes(self, writes).await?;
        Ok(marked)
    }
    /// [`Tx::doc_get_for_update`].
    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError>;
    /// [`Tx::doc_inc`].
    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError>;
    /// [`Tx::doc_inc_audited`]: by default the document read before and after the
    /// increment (three statements: cheap where a statement is a function call, SQLite,
    /// whose one writer also makes the reads exact).
    async fn doc_inc_audited(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<Incremented, DocError> {
        let before = select_doc(self, collection, id, "").await?;
        let value = TxConn::doc_inc(self, collection, id, field, delta).await?;
        let after = select_doc(self, collection, id, "").await?.ok_or_else(|| {
            DocError::Invalid(format!("{collection}/{id} vanished after its increment"))
        })?;
        Ok(Incremented {
            value,
            before,
            after,
        })
    }
}

/// [`Tx::record_writes`] on any backend.
pub(crate) async fn record_writes<C: TxConn + ?Sized>(
    conn: &mut C,
    writes: &[CallWrites],
) -> Result<(), StoreError> {
    for chunk in audit::rows(writes) {
        let mut st = Statement::build();
        audit::push_insert(&mut st, &chunk);
        conn.execute(&st).await?;
    }
    Ok(())
}

/// How often an audited `set` retries when the document is deleted and re-created
/// between its statements (each retry needs another transaction to do that again).
const PUT_ATTEMPTS: usize = 3;

/// [`Tx::doc_put_audited`] on any backend: the document is read under its row lock
/// (SQLite: the writer's lock) and replaced; an absent one is created only if still
/// absent, so one another transaction created meanwhile is never overwritten unseen.
async fn put_audited<C: TxConn + ?Sized>(
    conn: &mut C,
    collection: &str,
    id: &str,
    data: &str,
) -> Result<Option<String>, DocError> {
    let lock = conn.dialect().for_update;
    for _ in 0..PUT_ATTEMPTS {
        if let Some(before) = select_doc(conn, collection, id, lock).await? {
            write_doc(conn, collection, id, data, documents::REPLACE).await?;
            return Ok(Some(before));
        }
        if write_doc(conn, collection, id, data, documents::KEEP).await? == 1 {
            return Ok(None);
        }
    }
    Err(DocError::Invalid(format!(
        "document {collection}/{id} is being deleted and re-created concurrently; try again"
    )))
}

/// [`Tx::settle_paid`] on any backend.
pub(crate) async fn settle_paid<C: TxConn + ?Sized>(
    conn: &mut C,
    paid: &[PaidOrder],
) -> Result<u64, StoreError> {
    if paid.is_empty() {
        return Ok(0);
    }
    let mut st = Statement::build();
    orders::push_settle_paid(&mut st, paid);
    conn.execute(&st).await
}

/// [`Tx::finish_notifications`] on any backend.
pub(crate) async fn finish_notifications<C: TxConn + ?Sized>(
    conn: &mut C,
    rows: &[NotificationVerdict<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut st = Statement::build();
    notifications::push_finish_notifications(&mut st, rows);
    conn.execute(&st).await?;
    Ok(())
}

/// A document's JSON text, read with `lock` (empty, or the dialect's `FOR UPDATE`).
pub(crate) async fn select_doc<C: TxConn + ?Sized>(
    conn: &mut C,
    collection: &str,
    id: &str,
    lock: &str,
) -> Result<Option<String>, DocError> {
    let st = documents::select(conn.dialect(), collection, id, lock);
    let found = conn.fetch(&st, |r| r.text("data")).await?;
    Ok(found.into_iter().next().flatten())
}

/// The `INSERT` of a document with `on_conflict`, refused up front if the backend
/// cannot store it; how many rows it wrote.
pub(crate) async fn write_doc<C: TxConn + ?Sized>(
    conn: &mut C,
    collection: &str,
    id: &str,
    data: &str,
    on_conflict: &str,
) -> Result<u64, DocError> {
    let st = documents::write(conn.dialect(), collection, id, data, on_conflict)?;
    Ok(conn.execute(&st).await?)
}

#[async_trait]
impl<C: TxConn> Tx for C {
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
        TxConn::commit(self).await
    }

    async fn lock_order(&mut self, out_trade_no: &str) -> Result<Option<Order>, StoreError> {
        // On SQLite the lock fragment is empty: `BEGIN IMMEDIATE` already holds the
        // database write lock.
        match orders::select_order(out_trade_no, self.dialect().for_update) {
            Some(st) => Ok(self.fetch(&st, order_row).await?.pop()),
            None => Ok(None),
        }
    }

    async fn mark_paid(&mut self, paid: &MarkPaid<'_>) -> Result<bool, StoreError> {
        Ok(self.execute(&orders::mark_paid(paid)).await? == 1)
    }

    async fn lock_orders(&mut self, out_trade_nos: &[&str]) -> Result<Vec<Order>, StoreError> {
        match orders::lock_orders(out_trade_nos, self.dialect().for_update) {
            Some(st) => self.fetch(&st, order_row).await,
            None => Ok(Vec::new()),
        }
    }

    async fn settle_paid(&mut self, paid: &[PaidOrder]) -> Result<u64, StoreError> {
        settle_paid(self, paid).await
    }

    async fn finish_notifications(
        &mut self,
        rows: &[NotificationVerdict<'_>],
    ) -> Result<(), StoreError> {
        finish_notifications(self, rows).await
    }

    async fn settle(
        &mut self,
        paid: &[PaidOrder],
        rows: &[NotificationVerdict<'_>],
        writes: &[CallWrites],
    ) -> Result<u64, StoreError> {
        TxConn::settle(self, paid, rows, writes).await
    }

    async fn record_writes(&mut self, writes: &[CallWrites]) -> Result<(), StoreError> {
        record_writes(self, writes).await
    }

    async fn set_handler_result(
        &mut self,
        out_trade_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError> {
        let st = orders::set_handler_result(out_trade_no, handler_status, result, handler_version);
        self.execute(&st).await?;
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
        self.execute(&st).await?;
        Ok(())
    }

    async fn doc_get(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError> {
        select_doc(self, collection, id, "").await
    }

    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError> {
        TxConn::doc_get_for_update(self, collection, id).await
    }

    async fn doc_insert(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        let changed = write_doc(self, collection, id, data, documents::KEEP).await?;
        documents::inserted(changed, collection, id)
    }

    async fn doc_put(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        write_doc(self, collection, id, data, documents::REPLACE).await?;
        Ok(())
    }

    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError> {
        TxConn::doc_inc(self, collection, id, field, delta).await
    }

    async fn doc_delete(&mut self, collection: &str, id: &str) -> Result<bool, DocError> {
        Ok(self.execute(&documents::delete(collection, id)).await? == 1)
    }

    async fn doc_put_audited(
        &mut self,
        collection: &str,
        id: &str,
        data: &str,
    ) -> Result<Option<String>, DocError> {
        put_audited(self, collection, id, data).await
    }

    async fn doc_inc_audited(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<Incremented, DocError> {
        TxConn::doc_inc_audited(self, collection, id, field, delta).await
    }

    async fn doc_delete_audited(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError> {
        let st = documents::delete_returning(self.dialect(), collection, id);
        let gone = self.fetch(&st, |r| r.text("data")).await?;
        Ok(gone.into_iter().next().flatten())
    }

    async fn doc_query(
        &mut self,
        collection: &str,
        filters: &[(String, serde_json::Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, DocError> {
        match documents::query(self.dialect(), collection, filters, limit) {
            Some(st) => Ok(self.fetch(&st, documents::id_and_data).await?),
            // No stored document can hold that value.
            None => Ok(Vec::new()),
        }
    }

    async fn enqueue_task(&mut self, task: &NewTask) -> Result<i64, StoreError> {
        let st = tasks::enqueue_task(task);
        let mut id = self.fetch(&st, |r| required(r.int8("id")?, "id")).await?;
        id.pop()
            .ok_or_else(|| StoreError::Invalid("task insert returned no id".into()))
    }

    async fn get_refund(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        let st = refunds::select_refund(out_trade_no, out_refund_no);
        Ok(self.fetch(&st, refunds::refund_row).await?.pop())
    }

    async fn apply_refund(&mut self, refund: &NewRefund<'_>) -> Result<bool, StoreError> {
        if self.execute(&refunds::insert_refund(refund)).await? != 1 {
            return Ok(false);
        }
        let changed = self.execute(&refunds::add_to_order(refund)).await?;
        refunds::added(changed, refund)
    }

    async fn reserve_refund(
        &mut self,
        r: &NewRefundRequest<'_>,
    ) -> Result<Reservation, StoreError> {
        let Some(order) = self.lock_order(r.out_trade_no).await? else {
            return Ok(Reservation::NoOrder);
        };
        let select = payments::select_request(r.out_trade_no, r.out_refund_no);
        let existing = self.fetch(&select, payments::request_row).await?.pop();
        if let Some(e) = existing.clone() {
            if e.amount != r.amount {
                return Ok(Reservation::OtherAmount(e));
            }
            if e.state == payments::refund_state::SETTLED {
                return Ok(Reservation::Settled(e));
            }
            if e.state != payments::refund_state::FAILED {
                return Ok(Reservation::Existing(e));
            }
        }
        if !matches!(
            order.status,
            super::types::status::PAID | super::types::status::PARTIALLY_REFUNDED
        ) {
            return Ok(Reservation::NotRefundable(order.status));
        }
        let st = payments::in_flight(r.out_trade_no, r.out_refund_no);
        let waiting = self
            .fetch(&st, |row| required(row.int8("total")?, "total"))
            .await?
            .pop()
            .unwrap_or(0);
        let remaining = order.total_fee - order.refund_fee - waiting;
        if r.amount > remaining {
            return Ok(Reservation::TooMuch {
                remaining: remaining.max(0),
            });
        }
        self.execute(&payments::upsert_request(r)).await?;
        let reserved = self.fetch(&select, payments::request_row).await?.pop();
        reserved
            .map(Reservation::New)
            .ok_or_else(|| StoreError::Invalid("refund request vanished after its insert".into()))
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
        self.execute(&st).await?;
        Ok(())
    }
}
