//! What can go wrong in the store, and how callers tell a failure that goes away
//! (transient, unavailable) from one that says something about the data.

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no (connection, constraint, syntax...).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// SQLite said no, on the writer connection (see `sqlite/writer.rs`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Schema migration failed at start-up.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row violates a uniqueness rule (e.g. an `out_trade_no` that exists).
    #[error("{0}")]
    Conflict(String),
    /// The caller passed something the store cannot represent.
    #[error("{0}")]
    Invalid(String),
    /// A value stored in the database could not be read back (corrupt JSON, ...).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database asked for the transaction to be run again (seen under a handler).
    #[error("transient database failure: {0}")]
    Transient(String),
    /// The URL names no supported database.
    #[error("unsupported database url `{0}` (use sqlite://path or postgres://...)")]
    UnsupportedUrl(String),
    /// The database did not answer in time (see [`within`]): down, frozen or overloaded.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// A failure that says nothing about the data and goes away if the transaction is
    /// simply run again: a deadlock or serialization failure (PostgreSQL), a busy or
    /// locked database (SQLite), a lost connection. A connection lost during `COMMIT`
    /// leaves the outcome unknown; running a payment again is still safe, as it then
    /// finds its order paid by this very notification.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Transient(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            StoreError::Database(e) if connection_lost(e) => true,
            StoreError::Database(sqlx::Error::Database(e)) => matches!(
                e.code().as_deref(),
                Some("40P01" | "40001" | "55P03" | "5" | "6" | "517")
            ),
            _ => false,
        }
    }
}

impl StoreError {
    /// A failure of the database as a whole rather than of this request: it is down,
    /// unreachable, out of connections, frozen past a timeout, out of disk or read-only.
    /// Nothing was stored; the same request may succeed later (answer 503, not 500).
    pub fn is_unavailable(&self) -> bool {
        if self.is_transient() {
            return true;
        }
        // SQLite primary result codes: 8 READONLY, 10 IOERR, 13 FULL, 14 CANTOPEN
        // (extended codes keep the primary one in their low byte).
        let sqlite_unavailable = |code: i32| matches!(code & 0xff, 8 | 10 | 13 | 14);
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                sqlite_unavailable(e.extended_code)
            }
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => true,
            StoreError::Database(sqlx::Error::Database(db)) => db.code().is_some_and(|c| {
                // PostgreSQL class 53 (insufficient resources: disk full, out of memory,
                // too many connections), 57 (operator intervention), 25006 (read-only).
                c.starts_with("53")
                    || c.starts_with("57")
                    || c == "25006"
                    || c.parse::<i32>().is_ok_and(sqlite_unavailable)
            }),
            _ => false,
        }
    }
}

/// Runs `work` against the database, giving up after `limit` with
/// [`StoreError::Unavailable`]: a read for a person or a probe must not wait for a
/// database that does not answer (a frozen PostgreSQL never ends a query, whatever its
/// `statement_timeout`). Only for reads, or writes that are safe to abandon half-way:
/// the abandoned work may still complete after the caller was told it failed.
pub async fn within<T>(
    limit: std::time::Duration,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "the database did not answer within {} s (down, frozen or overloaded)",
            limit.as_secs_f32()
        ))),
    }
}

/// Whether a failure means the connection itself is gone (rather than a statement being
/// refused): an I/O error, or the server ending the session (SQLSTATE class 08,
/// connection exception; 57P01–57P03, administrator or crash shutdown).
pub(crate) fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// A failure of a document operation that the handler should see as such.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// `insert` of an existing id.
    #[error("document {0} already exists")]
    Conflict(String),
    /// `inc` of a field that is not an integer.
    #[error("field `{0}` is not an integer")]
    NotANumber(String),
    /// Bad argument.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for DocError {
    fn from(e: sqlx::Error) -> Self {
        DocError::Store(StoreError::Database(e))
    }
}

impl From<rusqlite::Error> for DocError {
    fn from(e: rusqlite::Error) -> Self {
        DocError::Store(StoreError::Sqlite(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_transient_refusals_are_not() {
        let io = |kind| StoreError::Database(sqlx::Error::Io(std::io::Error::from(kind)));
        assert!(io(std::io::ErrorKind::ConnectionReset).is_transient());
        assert!(io(std::io::ErrorKind::UnexpectedEof).is_transient());
        assert!(!StoreError::Database(sqlx::Error::RowNotFound).is_transient());
        assert!(!StoreError::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!StoreError::Invalid("bad".into()).is_transient());
    }
}
