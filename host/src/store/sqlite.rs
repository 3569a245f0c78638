//! The embedded SQLite backend (the default).
//!
//! One writer connection: SQLite allows one writer at a time anyway, and giving every
//! write transaction the same connection with `BEGIN IMMEDIATE` means a transaction
//! never fails half-way with `SQLITE_BUSY` when it upgrades from reading to writing.
//! Reads that are not part of a payment use a separate pool and see the last commit
//! (WAL).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::common::{self, Dialect};
use super::*;
use crate::config::{DatabaseConfig, SqliteSynchronous as Sync};

/// SQLite behind the [`Store`] trait.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
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
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(parent) = options.get_filename().parent() {
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
        Ok(Self { writer, reader })
    }
}

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

    fn doc_filter(p: usize) -> String {
        format!("json_extract(data, ${p}) IS json_extract(${}, '$')", p + 1)
    }

    fn field_param(field: &str) -> String {
        json_path(field)
    }
}

/// SQLite JSON path of a top-level field (names are checked to be plain before this).
fn json_path(field: &str) -> String {
    format!("$.\"{field}\"")
}

common::shared_statements!(sqlx::Sqlite);
super::claims::claim_statements!(sqlx::Sqlite);
super::refunds::refund_statements!(sqlx::Sqlite);
super::console::console_store!(SqliteStore, sqlx::Sqlite, reader: reader, writer: writer);

common::impl_store!(SqliteStore, reader: reader, writer: writer, {
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Box::new(SqliteTx { tx }))
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
});

/// An open SQLite write transaction.
struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
}

common::impl_tx!(SqliteTx, {
    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError> {
        // BEGIN IMMEDIATE already holds the database write lock.
        self.doc_get(collection, id).await
    }

    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError> {
        // One statement: create the document with the field, or add to an integer field.
        // The WHERE on DO UPDATE refuses non-integers, and a sum past 64 bits (SQLite
        // would make it a float); then no row comes back.
        let value: Option<i64> = sqlx::query_scalar(
            "INSERT INTO documents (collection, id, data, created_at, updated_at) \
             VALUES (?1, ?2, json_object(?3, ?4), ?6, ?6) \
             ON CONFLICT (collection, id) DO UPDATE SET \
               data = json_set(documents.data, ?5, COALESCE(json_extract(documents.data, ?5), 0) + ?4), \
               updated_at = ?6 \
             WHERE (json_type(documents.data, ?5) IS NULL OR json_type(documents.data, ?5) = 'integer') \
               AND typeof(COALESCE(json_extract(documents.data, ?5), 0) + ?4) = 'integer' \
             RETURNING json_extract(data, ?5)",
        )
        .bind(collection)
        .bind(id)
        .bind(field)
        .bind(delta)
        .bind(json_path(field))
        .bind(now_ms())
        .fetch_optional(&mut *self.tx)
        .await?;
        value.ok_or_else(|| DocError::NotANumber(field.to_owned()))
    }
});
