//! The embedded SQLite backend (the default).
//!
//! One writer at a time: SQLite allows one anyway, and a write transaction that starts
//! with `BEGIN IMMEDIATE` never fails half-way with `SQLITE_BUSY` when it upgrades from
//! reading to writing. Payment transactions and raw-notification inserts run on the
//! synchronous writer of [`super::sqlite_writer`]; the store's other writes go through a
//! one-connection sqlx pool after taking that writer's lock. Reads that are not part of
//! a payment use a separate pool and see the last commit (WAL).

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::common::{self, Dialect};
use super::sqlite_writer::{Held, Writer};
use super::*;
use crate::config::{DatabaseConfig, SqliteSynchronous as Sync};

/// SQLite behind the [`Store`] trait.
pub struct SqliteStore {
    /// The transactions' (and raw inserts') connection; its lock orders every write.
    tx_writer: Writer,
    /// The other writes' connection, used only while holding `tx_writer`'s lock.
    writer: SqlitePool,
    reader: SqlitePool,
}

/// A write connection of the sqlx pool, held together with the writer's lock.
pub(super) struct WriteConn {
    // Declared first so it is dropped first, while the lock is still held.
    conn: PoolConnection<Sqlite>,
    _held: Held,
}

impl std::ops::Deref for WriteConn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the embedded migrations.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(&config.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match config.sqlite_synchronous {
                Sync::Full => SqliteSynchronous::Full,
                Sync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let path = options.get_filename().to_path_buf();
        if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
            return Err(StoreError::Invalid(format!(
                "database.url `{}`: SQLite needs a file (the writer and the readers open it \
                 separately), e.g. sqlite://data/paynotify.db",
                config.url
            )));
        }
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Invalid(format!(
                        "cannot create database directory {}: {e}",
                        parent.display()
                    ))
                })?;
            }
        }
        // No ping before handing out a connection: a file cannot hang up, and the ping is
        // a hand-off to the connection's worker thread and back on every transaction
        // (~25 µs each way on a 2-vCPU VM, measured; sqlx still pings on release).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?;
        let tx_writer = Writer::open(&path, config.sqlite_synchronous, BUSY_TIMEOUT)?;
        Ok(Self {
            tx_writer,
            writer,
            reader,
        })
    }

    /// The sqlx write connection, once no transaction or other write has the writer.
    async fn write(&self) -> Result<WriteConn, StoreError> {
        let held = self.tx_writer.lock().await;
        let conn = self.writer.acquire().await?;
        Ok(WriteConn { conn, _held: held })
    }
}

/// How long a write waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl Dialect for Sqlite {
    const DOC_TEXT: &'static str = "data";
    const JSON_PARAM: &'static str = "";
    // `BEGIN IMMEDIATE` holds the database write lock for the whole transaction.
    const FOR_UPDATE: &'static str = "";
    // One statement on the single writer connection: atomic against other workers of
    // this process and, through SQLite's write lock, of other processes.
    const SKIP_LOCKED: &'static str = "";
    const APPEND_ERROR: &'static str = "json_insert(errors, '$[#]', $6)";
    const JSON_REFUSES_NUL: bool = false;
    const TEXT_LIST: &'static str = "SELECT value FROM json_each($1)";

    fn doc_filter(p: usize) -> String {
        format!("json_extract(data, ${p}) IS json_extract(${}, '$')", p + 1)
    }

    fn field_param(field: &str) -> String {
        json_path(field)
    }
}

/// SQLite JSON path of a top-level field (names are checked to be plain before this).
pub(super) fn json_path(field: &str) -> String {
    format!("$.\"{field}\"")
}

common::shared_statements!(sqlx::Sqlite);
super::claims::claim_statements!(sqlx::Sqlite);
super::refunds::refund_statements!(sqlx::Sqlite);
super::console::console_store!(SqliteStore, sqlx::Sqlite, reader: reader, writer: write);

common::impl_store!(SqliteStore, reader: reader, writer: write, {
    async fn insert_notifications(
        &self,
        batch: &[&NewNotification],
    ) -> Result<Vec<i64>, StoreError> {
        self.tx_writer.insert_notifications(batch).await
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        Ok(Box::new(self.tx_writer.begin().await?))
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
});

/// `doc_inc` in one statement: create the document with the field, or add to an integer
/// field. The WHERE on DO UPDATE refuses non-integers, and a sum past 64 bits (SQLite
/// would make it a float); then no row comes back. `$5` is the field's JSON path.
pub(super) const DOC_INC: &str =
    "INSERT INTO documents (collection, id, data, created_at, updated_at) \
     VALUES ($1, $2, json_object($3, $4), $6, $6) \
     ON CONFLICT (collection, id) DO UPDATE SET \
       data = json_set(documents.data, $5, COALESCE(json_extract(documents.data, $5), 0) + $4), \
       updated_at = $6 \
     WHERE (json_type(documents.data, $5) IS NULL OR json_type(documents.data, $5) = 'integer') \
       AND typeof(COALESCE(json_extract(documents.data, $5), 0) + $4) = 'integer' \
     RETURNING json_extract(data, $5)";
