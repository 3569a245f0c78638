//! Persistence: orders, received notifications, handler documents and tasks.
//!
//! The pipeline and the plugin capabilities see only [`Store`] and [`Tx`]; SQLite (the
//! embedded default) and PostgreSQL implement them. A [`Tx`] is one database transaction
//! with savepoints, so several notifications can share one commit, each inside its own
//! savepoint, without the pipeline changing.
//!
//! # Layout
//!
//! - [`types`]: the domain types; [`error`]: [`StoreError`] and [`DocError`].
//! - [`traits`]: what callers ask, by concern ([`OrderStore`], [`NotificationStore`],
//!   [`TaskStore`]), what each backend does its own way ([`Store`]), the payment
//!   transaction ([`Tx`]); the console's reads are [`console::ConsoleStore`], reached
//!   through [`Store::console`]; the plugin history is [`PluginHistoryStore`], reached
//!   through [`Store::plugin_history`]; the downloaded WeChat Pay platform certificates
//!   are [`PlatformCertStore`], reached through [`Store::platform_certs`]; placements and
//!   refund requests are [`PaymentStore`], reached through [`Store::payments`].
//! - `statement`: statements as data (text + parameters) and the one seam each backend
//!   implements to run them (`Sql`).
//! - SQL text beside its row mapping, by concern: `orders`, `notifications`, `tasks`,
//!   `documents`, `claims`, [`refunds`], `retention`, [`console`], [`plugin_history`],
//!   [`platform_certs`], [`payments`], [`ready`]. Each statement is written once and serves both backends (and SQLite's
//!   writer).
//! - [`sqlite`] (`mod`: the store; `writer`: its synchronous write connection; `tx`:
//!   its payment transaction) and [`postgres`] (`mod`: the store; `tx`: its payment
//!   transaction; `kept`: the connections transactions run on).
//!
//! # Why SQLite has its own synchronous writer
//!
//! SQLite's payment transactions, order inserts and raw-notification inserts run on one
//! rusqlite connection, on the calling thread, in `BEGIN IMMEDIATE … COMMIT`
//! (`sqlite::writer`), not on sqlx:
//!
//! - Speed: sqlx runs each SQLite connection on a worker thread, two thread hand-offs
//!   per statement (~25 µs each on a 2-vCPU VM, measured), while SQLite's own work for
//!   such a statement is a few µs; a payment batch is 5 + N statements on the one serial
//!   path of the commit loop.
//! - Certainty of the commit: `BEGIN IMMEDIATE` takes the write lock up front (no
//!   `SQLITE_BUSY` half-way when a read upgrades to a write), and every acknowledged write
//!   waits for a `COMMIT` SQLite reported done, rolled back on any failure. Through sqlx,
//!   an `INSERT … RETURNING` in autocommit handed back its row before its commit, and a
//!   failed commit left the connection inside a transaction that sqlx's depth
//!   bookkeeping never closed: every later write joined a transaction that was never
//!   committed (issue 29: the API answered 201 for orders that did not exist).
//!
//! So sqlx's SQLite transaction code is not needed: SQLite's sqlx pools serve the
//! migrations, the reads (a read-only pool, WAL) and the single writes outside a payment
//! (claims, task leases, console sessions), each one autocommit statement taken under
//! the writer's lock. The payment statements that sqlx once ran on SQLite exist only as
//! the shared [`Statement`](statement::Statement)s both backends' transactions run.
//!
//! PostgreSQL runs its transactions through sqlx on connections of its own (see
//! `postgres::kept`), with row locks where SQLite has its one writer.

pub mod audit;
mod claims;
pub mod console;
mod documents;
pub mod error;
mod notifications;
mod orders;
pub mod payments;
pub mod platform_certs;
pub mod plugin_history;
pub mod postgres;
pub mod ready;
pub mod refunds;
mod retention;
mod rows;
pub mod shadow;
pub mod sqlite;
mod statement;
mod tasks;
pub mod traits;
mod tx;
pub mod types;

pub use error::{within, DocError, StoreError};
pub use payments::{PaymentStore, Placement, RefundRequest, Reservation};
pub use platform_certs::PlatformCertRecord;
pub use refunds::{NewRefund, RefundRecord};
pub use traits::{
    ConsoleStore, NotificationStore, OrderStore, PlatformCertStore, PluginHistoryStore, Store,
    TaskStore, Tx,
};
pub use types::{
    status, ConsoleSession, Keyset, MarkPaid, NewNotification, NewOrder, NewTask,
    NotificationFilter, NotificationRecord, NotificationVerdict, Order, OrderCursor, OrderFilter,
    PaidOrder, PluginEvent, PluginEventKind, PluginEventRecord, TaskEnd, TaskFilter, TaskRecord,
    Verdict,
};

/// Opens the database named by the config URL and brings its schema up to date:
/// `sqlite:…` or `postgres://…` / `postgresql://…` (see [`postgres::PgStore::connect`]
/// for its `schema=NAME` parameter). Rejected bodies are cut at the default
/// `[retention] rejected_body_bytes`; the server uses [`connect_with`].
pub async fn connect(
    config: &crate::config::DatabaseConfig,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    connect_with(config, &crate::config::RetentionConfig::default()).await
}

/// [`connect`], cutting the bodies of notifications rejected without verifying at
/// `retention.rejected_body_bytes`.
pub async fn connect_with(
    config: &crate::config::DatabaseConfig,
    retention: &crate::config::RetentionConfig,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    let url = config.url.as_str();
    let cut_at = retention.rejected_body_bytes;
    if config.is_sqlite() {
        Ok(std::sync::Arc::new(
            sqlite::SqliteStore::connect(config)
                .await?
                .cutting_rejected_bodies_at(cut_at),
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            postgres::PgStore::connect(config)
                .await?
                .cutting_rejected_bodies_at(cut_at),
        ))
    } else {
        Err(StoreError::UnsupportedUrl(crate::config::redact_url(
            &config.url,
        )))
    }
}

/// A body length for SQL (`substr` takes a 32-bit integer); longer is "never cut".
fn cut_length(bytes: usize) -> i32 {
    i32::try_from(bytes).unwrap_or(i32::MAX)
}

/// The folder holding the database when it is a SQLite file (`None` for PostgreSQL):
/// where the host keeps its other local state by default.
pub fn database_dir(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    if file.as_os_str().is_empty() || file.as_os_str() == ":memory:" {
        return None;
    }
    Some(match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    })
}
