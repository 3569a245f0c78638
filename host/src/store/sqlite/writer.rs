//! SQLite's write path: one connection that this process's writers take in turn, on
//! which payment transactions and raw-notification inserts run synchronously, on the
//! calling thread.
//!
//! Why not sqlx here: sqlx runs every SQLite connection on a worker thread of its own,
//! so each statement is two thread hand-offs. On a 2-vCPU VM a hand-off costs ~25 µs of
//! CPU and as much wall time (measured with the dispatch bench: BEGIN + one increment +
//! ROLLBACK through sqlx took 13 context switches and ~340 µs of CPU), while SQLite's own
//! work for such a statement is a few µs. A payment batch makes 5 + N statements on the
//! one serial path of the commit loop; here they cost only SQLite's work.
//!
//! Blocking an async worker for them is fine: once `BEGIN IMMEDIATE` holds the write lock
//! no statement waits for a lock (WAL readers never block the writer), so a statement
//! blocks only for its own work and `COMMIT` for its fsync, as sqlx's worker thread would.
//! Only taking the write lock can wait, when another process holds it: that wait is
//! announced to tokio as blocking ([`Writer::run_waiting`]).
//!
//! The store's other writes still go through sqlx, on a second connection; they take this
//! connection's lock first ([`Writer::lock`]), so the two never make each other wait
//! inside SQLite, whose busy handler sleeps in steps of milliseconds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::ToSql;
use rusqlite::{Connection, OpenFlags, Statement};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::store::common::{sql, storable, StoreRow, ORDER_COLUMNS};
use crate::store::refunds::{self, NewRefund, RefundRecord};
use crate::store::{
    now_ms, DocError, MarkPaid, NewNotification, NewOrder, NewTask, NotificationVerdict, Order,
    PaidOrder, StoreError, Tx, Verdict,
};
use crate::config::SqliteSynchronous;

/// The WAL size past which it is checkpointed and truncated at once, and the size it is
/// cut back to on every reset (`journal_size_limit`). SQLite's own checkpoints after
/// each commit (every 1,000 pages, ~4 MiB) copy pages into the database but cannot
/// rewind the WAL while readers keep reading it, so under steady reads it grew without
/// bound (45 MB for 3,000 orders); and its file never shrinks by itself.
pub(super) const WAL_LIMIT_BYTES: i64 = 4 * 1024 * 1024;

/// Statements kept prepared: the batch statements have one text per batch size.
const STATEMENT_CACHE: usize = 256;

/// The writer connection, shared by the store's writers.
#[derive(Clone)]
pub(super) struct Writer {
    conn: Arc<Mutex<Connection>>,
    busy_timeout: Duration,
}

/// The writer, held: by a transaction for its whole life, or by one sqlx write.
pub(super) type Held = OwnedMutexGuard<Connection>;

impl Writer {
    /// Opens the writer on the database file (which sqlx has created and migrated).
    pub(super) fn open(
        path: &Path,
        synchronous: SqliteSynchronous,
        busy_timeout: Duration,
    ) -> Result<Writer, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match synchronous {
                SqliteSynchronous::Full => "FULL",
                SqliteSynchronous::Normal => "NORMAL",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // When the WAL is reset after a checkpoint, cut the file back to this size rather
        // than leaving it at its largest (see `checkpoint`).
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES)?;
        // Never wait inside SQLite on an async worker: see `run_waiting`.
        conn.busy_timeout(Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Writer {
            conn: Arc::new(Mutex::new(conn)),
            busy_timeout,
        })
    }

    /// Takes the writer (waiting for the transaction or write that has it).
    pub(super) async fn lock(&self) -> Held {
        self.conn.clone().lock_owned().await
    }

    /// Copies the whole WAL into the database and truncates it to nothing
    /// (`wal_checkpoint(TRUNCATE)`), waiting up to `wait` for readers still on older
    /// pages. True if it completed; false if readers were still in the way (the next
    /// round tries again). Holds the writer meanwhile: nothing else writes, so the
    /// checkpoint is not chasing new frames.
    pub(super) async fn checkpoint(&self, wait: Duration) -> Result<bool, StoreError> {
        let held = self.lock().await;
        let run = || -> rusqlite::Result<bool> {
            held.busy_timeout(wait)?;
            let busy = held.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
            held.busy_timeout(Duration::ZERO)?;
            Ok(busy? == 0)
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        Ok(if multi_thread {
            tokio::task::block_in_place(run)?
        } else {
            run()?
        })
    }

    /// `BEGIN IMMEDIATE`: a transaction holding the database write lock until it ends.
    pub(super) async fn begin(&self) -> Result<SqliteTx, StoreError> {
        let held = self.lock().await;
        self.run_waiting(&held, |c| c.execute_batch("BEGIN IMMEDIATE"))?;
        Ok(SqliteTx {
            conn: held,
            open: true,
        })
    }

    /// Runs `f` in `BEGIN IMMEDIATE … COMMIT` on the held writer: when this returns
    /// `Ok`, SQLite has reported the commit done, so the caller may acknowledge. On any
    /// error, the commit's included (a full disk), the transaction is rolled back unless
    /// SQLite already did, and the connection is left with no transaction open.
    ///
    /// Why explicit and not autocommit: an `INSERT … RETURNING` hands back its rows
    /// before the statement's implicit commit, and a reader that stops at the first row
    /// (sqlx's `fetch_one`) never sees that commit fail; a connection left inside a
    /// transaction by a failed commit then turned every later write into one that was
    /// never committed (the API answered 201 for thousands of orders that did not exist).
    fn in_transaction<T>(
        &self,
        conn: &Connection,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.run_waiting(conn, |c| c.execute_batch("BEGIN IMMEDIATE"))?;
        let done = f(conn).and_then(|out| conn.execute_batch("COMMIT").map(|()| out));
        if done.is_err() && !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "rollback after a failed write failed");
            }
        }
        Ok(done?)
    }

    /// Inserts an order and returns it as stored (committed; see [`Writer::in_transaction`]).
    pub(super) async fn create_order(&self, o: &NewOrder) -> Result<Order, StoreError> {
        let custom = o.custom.to_string();
        let held = self.lock().await;
        let rows = self.in_transaction(&held, |c| {
            query(
                c,
                &sql::insert_order(),
                &[
                    &o.out_trade_no,
                    &o.order_type,
                    &o.provider,
                    &o.account,
                    &o.total_fee,
                    &o.user_id,
                    &custom,
                    &now_ms(),
                ],
                |r| Ok::<_, rusqlite::Error>(r.order()),
            )
        });
        match rows {
            Ok(mut rows) => rows
                .pop()
                .unwrap_or_else(|| Err(StoreError::Invalid("the order was not stored".into()))),
            Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Conflict(format!(
                    "order {} already exists",
                    o.out_trade_no
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Stores a batch of raw notifications with one multi-row `INSERT … RETURNING id`
    /// in a transaction of its own (see [`Writer::in_transaction`]), ids in the batch's
    /// order.
    pub(super) async fn insert_notifications(
        &self,
        batch: &[&NewNotification],
    ) -> Result<Vec<i64>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(batch.len());
        for n in batch {
            let headers = serde_json::to_string(&n.headers)
                .map_err(|e| StoreError::Invalid(format!("headers: {e}")))?;
            rows.push((n, headers));
        }
        let text = format!(
            "{}{} RETURNING id",
            sql::INSERT_NOTIFICATIONS,
            values(batch.len(), 7, 1)
        );
        let held = self.lock().await;
        let mut ids = self.in_transaction(&held, |c| {
            let mut stmt = c.prepare_cached(&text)?;
            let mut i = 0;
            for (n, headers) in &rows {
                bind_next(&mut stmt, &mut i, storable(&n.provider))?;
                bind_next(&mut stmt, &mut i, n.account.as_deref().map(storable))?;
                bind_next(&mut stmt, &mut i, n.received_at)?;
                bind_next(&mut stmt, &mut i, n.remote_addr.as_deref().map(storable))?;
                bind_next(&mut stmt, &mut i, headers.as_str())?;
                bind_next(&mut stmt, &mut i, n.body.as_slice())?;
                bind_next(&mut stmt, &mut i, n.truncated)?;
            }
            let mut ids = Vec::with_capacity(rows.len());
            let mut result = stmt.raw_query();
            while let Some(row) = result.next()? {
                ids.push(row.get::<_, i64>(0)?);
            }
            Ok(ids)
        })?;
        if ids.len() != batch.len() {
            return Err(StoreError::Invalid(format!(
                "stored {} of {} notifications",
                ids.len(),
                batch.len()
            )));
        }
        // One writer: the rows took increasing ids in VALUES order.
        ids.sort_unstable();
        Ok(ids)
    }

    /// Runs `f` on the held connection at once; if the database is locked by another
    /// process (SQLITE_BUSY), runs it again allowing SQLite to wait up to the configured
    /// busy timeout, telling tokio that this worker thread blocks meanwhile (so its other
    /// tasks move to another thread).
    fn run_waiting<T>(
        &self,
        conn: &Connection,
        mut f: impl FnMut(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        match f(conn) {
            Err(e) if is_busy(&e) => {}
            done => return Ok(done?),
        }
        let mut wait = || {
            conn.busy_timeout(self.busy_timeout)?;
            let r = f(conn);
            conn.busy_timeout(Duration::ZERO)?;
            r
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        Ok(if multi_thread {
            tokio::task::block_in_place(wait)?
        } else {
            wait()?
        })
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// `VALUES ($first, …), (…)`: `rows` rows of `width` numbered parameters.
fn values(rows: usize, width: usize, first: usize) -> String {
    let mut out = String::from("VALUES ");
    let mut n = first;
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&n.to_string());
            n += 1;
        }
        out.push(')');
    }
    out
}

/// Binds `value` to the next parameter of a statement built here, whose `$n` appear in
/// increasing order (SQLite numbers `$n` names by first appearance, so `$n` is index n):
/// by position, because a batch statement has hundreds of parameters and looking each
/// name up is a scan of all of them.
fn bind_next<T: ToSql>(stmt: &mut Statement<'_>, i: &mut usize, value: T) -> rusqlite::Result<()> {
    *i += 1;
    stmt.raw_bind_parameter(*i, value)
}

/// Prepares (cached) `text` and binds `args` to `$1`, `$2`, … by name: the shared SQL
/// may use them out of order or more than once.
fn prepare<'c>(
    conn: &'c Connection,
    text: &str,
    args: &[&dyn ToSql],
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let mut stmt = conn.prepare_cached(text)?;
    for (i, a) in args.iter().enumerate() {
        let name = format!("${}", i + 1);
        let index = stmt
            .parameter_index(&name)?
            .ok_or(rusqlite::Error::InvalidParameterName(name))?;
        stmt.raw_bind_parameter(index, a)?;
    }
    Ok(stmt)
}

/// Runs a statement that returns no rows; how many rows it changed.
fn execute(conn: &Connection, text: &str, args: &[&dyn ToSql]) -> rusqlite::Result<usize> {
    prepare(conn, text, args)?.raw_execute()
}

/// Runs a query; `map` turns each row into a value.
fn query<T, E: From<rusqlite::Error>>(
    conn: &Connection,
    text: &str,
    args: &[&dyn ToSql],
    mut map: impl FnMut(&rusqlite::Row<'_>) -> Result<T, E>,
) -> Result<Vec<T>, E> {
    let mut stmt = prepare(conn, text, args)?;
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

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
    fn savepoint_op(&mut self, verb: &str, name: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(&sql::savepoint(verb, name)?)?;
        Ok(())
    }

    fn select_doc(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError> {
        let text = sql::select_document::<sqlx::Sqlite>("");
        let mut found = query(&self.conn, &text, &[&collection, &id], |r| {
            r.get::<_, String>(0)
        })?;
        Ok(found.pop())
    }

    /// `INSERT … ON CONFLICT {on_conflict}`; true if a row was written.
    fn write_doc(
        &mut self,
        collection: &str,
        id: &str,
        data: &str,
        on_conflict: &str,
    ) -> Result<bool, DocError> {
        let text = sql::write_document::<sqlx::Sqlite>(on_conflict);
        let done = execute(&self.conn, &text, &[&collection, &id, &data, &now_ms()])?;
        Ok(done == 1)
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
        if out_trade_no.contains('\0') {
            return Ok(None);
        }
        // BEGIN IMMEDIATE already holds the database write lock.
        let mut found = query(&self.conn, &sql::select_order(""), &[&out_trade_no], |r| {
            r.order()
        })?;
        Ok(found.pop())
    }

    async fn mark_paid(&mut self, p: &MarkPaid<'_>) -> Result<bool, StoreError> {
        let done = execute(
            &self.conn,
            sql::MARK_PAID,
            &[
                &p.out_trade_no,
                &storable(p.transaction_id),
                &p.pay_date,
                &now_ms(),
                &p.notification_id,
                &p.original_data.to_string(),
            ],
        )?;
        Ok(done == 1)
    }

    async fn lock_orders(&mut self, out_trade_nos: &[&str]) -> Result<Vec<Order>, StoreError> {
        let nos: Vec<&str> = out_trade_nos
            .iter()
            .copied()
            .filter(|n| !n.contains('\0'))
            .collect();
        if nos.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (1..=nos.len()).map(|i| format!("${i}")).collect();
        let text = format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE out_trade_no IN ({}) ORDER BY out_trade_no",
            list.join(", ")
        );
        let args: Vec<&dyn ToSql> = nos.iter().map(|n| n as &dyn ToSql).collect();
        query(&self.conn, &text, &args, |r| r.order())
    }

    async fn settle_paid(&mut self, paid: &[PaidOrder]) -> Result<u64, StoreError> {
        if paid.is_empty() {
            return Ok(0);
        }
        let text = format!(
            "{}$1, updated_at = $1 FROM ({}{}",
            sql::SETTLE_PAID_SET,
            values(paid.len(), 7, 2),
            sql::SETTLE_PAID_WHERE
        );
        let mut stmt = self.conn.prepare_cached(&text)?;
        let mut i = 0;
        bind_next(&mut stmt, &mut i, now_ms())?;
        for p in paid {
            bind_next(&mut stmt, &mut i, p.out_trade_no.as_str())?;
            bind_next(&mut stmt, &mut i, storable(&p.transaction_id))?;
            bind_next(&mut stmt, &mut i, p.pay_date)?;
            bind_next(&mut stmt, &mut i, p.notification_id)?;
            bind_next(&mut stmt, &mut i, p.original_data.as_str())?;
            bind_next(&mut stmt, &mut i, p.handler_result.as_str())?;
            bind_next(&mut stmt, &mut i, storable(&p.handler_version))?;
        }
        Ok(stmt.raw_execute()? as u64)
    }

    async fn finish_notifications(
        &mut self,
        rows: &[NotificationVerdict<'_>],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let text = format!(
            "{}$1 FROM ({}{}",
            sql::FINISH_NOTIFICATIONS_SET,
            values(rows.len(), 5, 2),
            sql::FINISH_NOTIFICATIONS_WHERE
        );
        let mut stmt = self.conn.prepare_cached(&text)?;
        let mut i = 0;
        bind_next(&mut stmt, &mut i, now_ms())?;
        for r in rows {
            bind_next(&mut stmt, &mut i, r.id)?;
            bind_next(&mut stmt, &mut i, r.verdict.as_str())?;
            bind_next(&mut stmt, &mut i, r.reason.map(storable))?;
            bind_next(&mut stmt, &mut i, r.out_trade_no.map(storable))?;
            bind_next(&mut stmt, &mut i, r.account.map(storable))?;
        }
        stmt.raw_execute()?;
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
            sql::SET_HANDLER_RESULT,
            &[
                &out_trade_no,
                &handler_status,
                &result.to_string(),
                &handler_version.map(storable),
                &now_ms(),
            ],
        )?;
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
        execute(
            &self.conn,
            sql::FINISH_NOTIFICATION,
            &[
                &id,
                &verdict.as_str(),
                &reason.map(storable),
                &out_trade_no.map(storable),
                &account.map(storable),
                &now_ms(),
            ],
        )?;
        Ok(())
    }

    async fn doc_get(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError> {
        self.select_doc(collection, id)
    }

    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError> {
        // BEGIN IMMEDIATE already holds the database write lock.
        self.select_doc(collection, id)
    }

    async fn doc_insert(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        if self.write_doc(collection, id, data, sql::DOC_KEEP)? {
            Ok(())
        } else {
            Err(DocError::Conflict(format!("{collection}/{id}")))
        }
    }

    async fn doc_put(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        self.write_doc(collection, id, data, sql::DOC_REPLACE)?;
        Ok(())
    }

    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError> {
        let path = super::json_path(field);
        let mut value = query(
            &self.conn,
            super::DOC_INC,
            &[&collection, &id, &field, &delta, &path, &now_ms()],
            |r| r.get::<_, i64>(0),
        )?;
        value
            .pop()
            .ok_or_else(|| DocError::NotANumber(field.to_owned()))
    }

    async fn doc_delete(&mut self, collection: &str, id: &str) -> Result<bool, DocError> {
        Ok(execute(&self.conn, sql::DOC_DELETE, &[&collection, &id])? == 1)
    }

    async fn doc_query(
        &mut self,
        collection: &str,
        filters: &[(String, serde_json::Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, DocError> {
        let text = sql::doc_query::<sqlx::Sqlite>(filters.len());
        let pairs: Vec<(String, String)> = filters
            .iter()
            .map(|(field, value)| (super::json_path(field), value.to_string()))
            .collect();
        let limit = i64::from(limit);
        let mut args: Vec<&dyn ToSql> = vec![&collection];
        for (field, value) in &pairs {
            args.push(field);
            args.push(value);
        }
        args.push(&limit);
        query(&self.conn, &text, &args, |r| {
            Ok::<_, DocError>((r.get("id")?, r.get("data")?))
        })
    }

    async fn enqueue_task(&mut self, t: &NewTask) -> Result<i64, StoreError> {
        let mut id = query(
            &self.conn,
            sql::ENQUEUE_TASK,
            &[
                &t.plugin,
                &storable(&t.name),
                &t.payload,
                &t.out_trade_no,
                &t.provider,
                &t.account,
                &t.run_at,
                &now_ms(),
            ],
            |r| r.get::<_, i64>(0),
        )?;
        id.pop()
            .ok_or_else(|| StoreError::Invalid("task insert returned no id".into()))
    }

    async fn get_refund(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRecord>, StoreError> {
        let mut found = query(
            &self.conn,
            &refunds::select_refund(),
            &[&storable(out_trade_no), &storable(out_refund_no)],
            |r| r.refund(),
        )?;
        Ok(found.pop())
    }

    async fn apply_refund(&mut self, r: &NewRefund<'_>) -> Result<bool, StoreError> {
        let inserted = execute(
            &self.conn,
            refunds::INSERT_REFUND,
            &[
                &storable(r.out_trade_no),
                &storable(r.out_refund_no),
                &storable(r.refund_id),
                &r.provider,
                &r.account,
                &r.amount,
                &(r.refunded_before + r.amount),
                &r.refunded_at,
                &r.notification_id,
                &r.original_data.to_string(),
                &now_ms(),
            ],
        )?;
        if inserted != 1 {
            return Ok(false);
        }
        let added = execute(
            &self.conn,
            refunds::ADD_TO_ORDER,
            &[
                &r.out_trade_no,
                &r.amount,
                &r.new_status,
                &now_ms(),
                &r.refunded_before,
            ],
        )?;
        if added != 1 {
            // The caller holds the order's lock; if it still moved, refuse.
            return Err(StoreError::Invalid(format!(
                "order {} changed while refund {} was applied to it",
                r.out_trade_no, r.out_refund_no
            )));
        }
        Ok(true)
    }

    async fn set_refund_handler_result(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError> {
        execute(
            &self.conn,
            refunds::SET_REFUND_HANDLER_RESULT,
            &[
                &storable(out_trade_no),
                &storable(out_refund_no),
                &handler_status,
                &result.to_string(),
                &handler_version.map(storable),
            ],
        )?;
        Ok(())
    }
}
