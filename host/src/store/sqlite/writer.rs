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

use rusqlite::{CachedStatement, Connection, OpenFlags};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::config::SqliteSynchronous;
use crate::store::notifications::{id_row, ids_in_order, insert_notifications};
use crate::store::orders::insert_order;
use crate::store::rows::order_row;
use crate::store::statement::{Columns, RowMap, Statement};
use crate::store::types::{NewNotification, NewOrder, Order};
use crate::store::StoreError;

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

    /// `BEGIN IMMEDIATE`: the writer, held, in a transaction holding the database write
    /// lock until it ends (the caller wraps it in a `SqliteTx`, which ends it).
    pub(super) async fn begin(&self) -> Result<Held, StoreError> {
        let held = self.lock().await;
        self.run_waiting(&held, |c| c.execute_batch("BEGIN IMMEDIATE"))?;
        Ok(held)
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
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run_waiting(conn, |c| c.execute_batch("BEGIN IMMEDIATE"))?;
        let done = f(conn).and_then(|out| Ok(conn.execute_batch("COMMIT").map(|()| out)?));
        if done.is_err() && !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "rollback after a failed write failed");
            }
        }
        done
    }

    /// Inserts an order and returns it as stored (committed; see [`Writer::in_transaction`]).
    pub(super) async fn create_order(&self, o: &NewOrder) -> Result<Order, StoreError> {
        let st = insert_order(o);
        let held = self.lock().await;
        match self.in_transaction(&held, |c| fetch(c, &st, order_row)) {
            Ok(mut rows) => rows
                .pop()
                .ok_or_else(|| StoreError::Invalid("the order was not stored".into())),
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
        let Some(st) = insert_notifications(batch)? else {
            return Ok(Vec::new());
        };
        let held = self.lock().await;
        let ids = self.in_transaction(&held, |c| fetch(c, &st, id_row))?;
        // One writer: the rows took increasing ids in VALUES order.
        ids_in_order(ids, batch.len())
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

/// Prepares (cached) the statement and binds its parameters: by position when they
/// were numbered in order (`$n` is then parameter n, since SQLite numbers `$n` names by
/// first appearance), else by name, as a fixed text may use them out of order or twice.
fn prepare<'c>(conn: &'c Connection, st: &Statement<'_>) -> rusqlite::Result<CachedStatement<'c>> {
    let mut stmt = conn.prepare_cached(&st.text)?;
    for (i, value) in st.params.iter().enumerate() {
        let index = if st.in_order {
            i + 1
        } else {
            let name = format!("${}", i + 1);
            stmt.parameter_index(&name)?
                .ok_or(rusqlite::Error::InvalidParameterName(name))?
        };
        stmt.raw_bind_parameter(index, value)?;
    }
    Ok(stmt)
}

/// Runs a statement on the writer; how many rows it changed.
pub(super) fn execute(conn: &Connection, st: &Statement<'_>) -> Result<u64, StoreError> {
    Ok(prepare(conn, st)?.raw_execute()? as u64)
}

/// Runs a statement that returns rows on the writer, mapping each with `map`.
pub(super) fn fetch<T>(
    conn: &Connection,
    st: &Statement<'_>,
    map: RowMap<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = prepare(conn, st)?;
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// A row of the writer's as [`Columns`].
impl Columns for rusqlite::Row<'_> {
    fn int8(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.get(name)?)
    }
    fn int4(&self, name: &str) -> Result<Option<i32>, StoreError> {
        Ok(self.get(name)?)
    }
    fn text(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get(name)?)
    }
    fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(name)?)
    }
    fn boolean(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.get(name)?)
    }
}
