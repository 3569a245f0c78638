//! PostgreSQL connections for transactions and the raw-notification insert, kept open
//! out of sqlx's pool.
//!
//! sqlx's pool makes a round trip to the server each time it hands a connection out
//! (`test_before_acquire`) and again, always, each time one comes back (a ping before
//! it is put back). The notification path takes a connection twice per batch (store the
//! raw batch, then settle it), so those four pings were ~0.7 of the ~2.6 round trips a
//! notification cost at saturation, and round trips (kernel send + wake-up on both
//! sides) are the larger part of PostgreSQL's CPU on a loopback connection.
//!
//! Here a connection is checked only when that can matter:
//! - a transaction's `BEGIN` is the check: if it fails because the connection is gone,
//!   nothing happened, so it runs again once on a new connection;
//! - a single autocommit statement (the raw insert) gets a ping first only if its
//!   connection sat idle for a while (the server or the network may have dropped it):
//!   failing the statement itself would leave the caller unsure whether it committed.
//!
//! A transaction dropped unfinished is rolled back at once by a task of its own (its
//! row locks may be what another transaction, perhaps in another process, waits for)
//! before its connection is kept again. (sqlx's `TransactionManager` would only queue
//! the `ROLLBACK` to go out with the connection's next use, which may be much later.)
//!
//! A connection that fails a commit or a statement outside a transaction is dropped,
//! not kept: its state is unknown.
//!
//! Opening a connection is bounded (`[database] timeout_secs`): a frozen server accepts
//! the TCP connection in its kernel and never answers the start-up message.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::store::error::connection_lost;
use crate::store::StoreError;

/// How long a connection may sit idle and still be used without a ping.
const FRESH: Duration = Duration::from_secs(1);

/// How long a caller waits for a connection when all are lent out.
const WAIT: Duration = Duration::from_secs(30);

/// The kept connections: idle ones, and a cap on how many exist.
pub(super) struct KeptConns {
    options: PgConnectOptions,
    /// Longest a new connection may take to open.
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    max: u32,
}

/// A connection waiting for its next use.
struct Idle {
    conn: PgConnection,
    since: Instant,
}

impl KeptConns {
    /// At most `max` connections, opened on demand with `options`, each within
    /// `connect_timeout`.
    pub(super) fn new(options: PgConnectOptions, max: u32, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            options,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max.max(1) as usize)),
            max: max.max(1),
        })
    }

    /// A connection for one autocommit statement whose outcome must not be in doubt:
    /// pinged first unless it was used a moment ago.
    pub(super) async fn statement(self: &Arc<Self>) -> Result<Kept, StoreError> {
        let permit = self.permit().await?;
        while let Some(mut idle) = self.pop() {
            if idle.since.elapsed() < FRESH {
                return Ok(self.lend(idle.conn, permit, false));
            }
            match idle.conn.ping().await {
                Ok(()) => return Ok(self.lend(idle.conn, permit, false)),
                Err(e) => {
                    tracing::info!(error = %e, "kept PostgreSQL connection is gone; dropping it")
                }
            }
        }
        let conn = self.connect().await?;
        Ok(self.lend(conn, permit, false))
    }

    /// A connection inside a new transaction. Its `BEGIN` checks the connection: one
    /// that fails for a lost connection is dropped and `BEGIN` runs once more on a new
    /// one (nothing had happened).
    pub(super) async fn begin(self: &Arc<Self>) -> Result<Kept, StoreError> {
        let permit = self.permit().await?;
        if let Some(mut idle) = self.pop() {
            match idle.conn.execute("BEGIN").await {
                Ok(_) => return Ok(self.lend(idle.conn, permit, true)),
                Err(e) if connection_lost(&e) => {
                    tracing::info!(error = %e, "kept PostgreSQL connection is gone; opening another");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut conn = self.connect().await?;
        conn.execute("BEGIN").await?;
        Ok(self.lend(conn, permit, true))
    }

    /// A place among the lent connections, waited for as sqlx's pool waits (30 s).
    async fn permit(self: &Arc<Self>) -> Result<OwnedSemaphorePermit, StoreError> {
        match tokio::time::timeout(WAIT, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; say so rather than panic if it were.
            Ok(Err(e)) => Err(StoreError::Invalid(format!("connection limit: {e}"))),
            Err(_) => Err(StoreError::Transient(format!(
                "no PostgreSQL connection free for a transaction after {} s \
                 (all {} in use; see [database] max_connections)",
                WAIT.as_secs(),
                self.max
            ))),
        }
    }

    /// Puts a connection, outside any transaction, back among the idle ones.
    fn keep(&self, conn: PgConnection) {
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(idle);
    }

    /// The most recently used idle connection (the likeliest to be alive and warm).
    fn pop(&self) -> Option<Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    async fn connect(&self) -> Result<PgConnection, StoreError> {
        match tokio::time::timeout(
            self.connect_timeout,
            PgConnection::connect_with(&self.options),
        )
        .await
        {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(StoreError::Unavailable(format!(
                "PostgreSQL did not accept a connection within {} s",
                self.connect_timeout.as_secs()
            ))),
        }
    }

    fn lend(
        self: &Arc<Self>,
        conn: PgConnection,
        permit: OwnedSemaphorePermit,
        in_tx: bool,
    ) -> Kept {
        Kept {
            conn: Some(conn),
            home: self.clone(),
            permit: Some(permit),
            in_tx,
        }
    }
}

/// A kept connection lent out; goes back when dropped.
pub(super) struct Kept {
    /// `Some` until dropped.
    conn: Option<PgConnection>,
    home: Arc<KeptConns>,
    /// Its place among the lent connections (`Some` until dropped).
    permit: Option<OwnedSemaphorePermit>,
    /// A transaction is open on it.
    in_tx: bool,
}

impl Kept {
    /// Commits the open transaction. A connection whose commit failed is not kept: its
    /// state is unknown.
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let conn: &mut PgConnection = &mut self;
        match conn.execute("COMMIT").await {
            Ok(_) => {
                self.in_tx = false;
                Ok(())
            }
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    /// Drops the connection instead of keeping it (after a failure that may have left
    /// it broken or half-way through a message). Takes `self`, so nothing can use the
    /// connection afterwards.
    pub(super) fn discard(mut self) {
        self.conn = None;
    }
}

impl Deref for Kept {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("a lent connection is present until dropped")
    }
}

impl DerefMut for Kept {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lent connection is present until dropped")
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.in_tx {
            self.home.keep(conn);
            return;
        }
        // Unfinished: its locks are held until ROLLBACK, which cannot wait for this
        // connection's next use. The place among the lent connections goes with it,
        // so the cap holds until it is back. Outside a runtime (at shutdown) the
        // connection is closed instead, which rolls back too.
        let (home, permit) = (self.home.clone(), self.permit.take());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut conn = conn;
                match conn.execute("ROLLBACK").await {
                    Ok(_) => home.keep(conn),
                    Err(e) => tracing::info!(
                        error = %e,
                        "rolling back a PostgreSQL transaction failed; dropping its connection"
                    ),
                }
                drop(permit);
            });
        }
    }
}
