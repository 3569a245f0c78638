//! The embedded SQLite backend (the default).
//!
//! One writer at a time: SQLite allows one anyway, and a write transaction that starts
//! with `BEGIN IMMEDIATE` never fails half-way with `SQLITE_BUSY` when it upgrades from
//! reading to writing. Payment transactions and raw-notification inserts run on the
//! synchronous writer of `writer` (see the store's module docs for why), in the
//! transaction of `tx`; the store's other writes go through a
//! one-connection sqlx pool after taking that writer's lock. Reads that are not part of
//! a payment use a separate pool and see the last commit (WAL).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

use super::audit::AuditStore;
use super::payments::PaymentStore;
use super::statement::{map_rows, sqlx_query, Dialect, On, RowMap, Sql, Statement};
use super::traits::{ConsoleStore, PlatformCertStore, PluginHistoryStore};
use super::types::{NewNotification, NewOrder, Order};
use super::{ready, Store, StoreError, Tx};
use crate::config::{DatabaseConfig, SqliteSynchronous as Sync};
use crate::time::now_ms;
use writer::{Held, Writer, WAL_LIMIT_BYTES};

mod tx;
mod writer;

/// SQLite behind the [`Store`] trait.
pub struct SqliteStore {
    /// The transactions' (and raw inserts') connection; its lock orders every write.
    tx_writer: Writer,
    /// The other writes' connection, used only while holding `tx_writer`'s lock.
    writer: SqlitePool,
    reader: SqlitePool,
    /// Keeps the WAL bounded (see [`keep_wal_bounded`]); stopped when the store goes.
    wal_keeper: tokio::task::JoinHandle<()>,
    /// The database file (its write-ahead log is beside it, `-wal`).
    path: std::path::PathBuf,
    /// Bodies of notifications rejected without verifying are cut to this many bytes.
    cut_rejected_at: i32,
    /// The last readiness check (see `store::ready`).
    ready: ready::ReadyCache,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.wal_keeper.abort();
    }
}

/// How often the WAL's size is looked at (and reported).
const WAL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a checkpoint waits for readers on older pages before trying again later.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(500);

/// Every [`WAL_CHECK_EVERY`]: reports the WAL's size, and checkpoints and truncates it
/// when it is over [`WAL_LIMIT_BYTES`]. SQLite's automatic checkpoints cannot rewind a
/// WAL that readers keep using, so without this it grows as long as reads never pause;
/// this one waits for the readers (briefly, holding the writer) and starts the WAL over.
async fn keep_wal_bounded(writer: Writer, wal: std::path::PathBuf) {
    let mut tick = tokio::time::interval(WAL_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        crate::metrics::sqlite_wal_bytes(size);
        if size <= WAL_LIMIT_BYTES as u64 {
            continue;
        }
        match writer.checkpoint(CHECKPOINT_WAIT).await {
            Ok(done) => {
                if failing {
                    tracing::info!("WAL checkpoints work again");
                    failing = false;
                }
                if done {
                    let after = std::fs::metadata(&wal).map_or(0, |m| m.len());
                    crate::metrics::sqlite_wal_bytes(after);
                    tracing::debug!(before = size, after, "WAL checkpointed and truncated");
                }
            }
            Err(e) => {
                // A full disk, usually: the pages stay in the WAL (nothing is lost) and
                // the next round tries again.
                if !failing {
                    tracing::warn!(error = %e, wal_bytes = size, "cannot checkpoint the WAL; retrying every second");
                    failing = true;
                }
            }
        }
    }
}

/// A write connection of the sqlx pool, held together with the writer's lock.
struct WriteConn {
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
            .pragma("journal_size_limit", WAL_LIMIT_BYTES.to_string())
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
            .acquire_timeout(config.timeout())
            .connect_with(options.read_only(true))
            .await?;
        let tx_writer = Writer::open(&path, config.sqlite_synchronous, BUSY_TIMEOUT)?;
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let wal_keeper = tokio::spawn(keep_wal_bounded(tx_writer.clone(), wal.into()));
        Ok(Self {
            tx_writer,
            writer,
            reader,
            wal_keeper,
            path,
            cut_rejected_at: super::cut_length(
                crate::config::RetentionConfig::default().rejected_body_bytes,
            ),
            ready: ready::ReadyCache::default(),
        })
    }

    /// Cuts the bodies of notifications rejected without verifying at `bytes` (default:
    /// `[retention] rejected_body_bytes`'s).
    pub fn cutting_rejected_bodies_at(mut self, bytes: usize) -> Self {
        self.cut_rejected_at = super::cut_length(bytes);
        self
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

/// Bytes of new data the readiness check writes (and removes) beside the database file.
const ROOM_PROBE_BYTES: usize = 64 * 1024;

/// Whether the database's filesystem takes new data: writes [`ROOM_PROBE_BYTES`] to a new
/// file beside it, syncs and removes it. Needed besides the commit of the readiness check:
/// on a full disk SQLite still commits a small change into WAL space it already holds (a
/// WAL reset after a checkpoint is rewritten from its start), while any payment that needs
/// a new page fails. Random bytes, so a compressing filesystem cannot store them in less.
async fn room_for_new_data(db: &Path) -> Result<(), StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push("-ready");
    let probe = PathBuf::from(name);
    let shown = probe.display().to_string();
    let written = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let bytes: Vec<u8> = (0..ROOM_PROBE_BYTES)
            .map(|_| rand::random::<u8>())
            .collect();
        let written = std::fs::File::create(&probe)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_data()));
        // Removed whether or not it was written: a partial file would hold what is left.
        let _ = std::fs::remove_file(&probe);
        written
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StoreError::Unavailable(format!(
            "cannot write new data beside the database ({} KiB to {shown}): {e}",
            ROOM_PROBE_BYTES / 1024
        ))),
        Err(e) => Err(StoreError::Unavailable(format!(
            "the disk check beside the database failed: {e}"
        ))),
    }
}

/// SQLite's SQL fragments (see [`Dialect`]).
static SQLITE: Dialect = Dialect {
    doc_text: "data",
    json_param: "",
    // `BEGIN IMMEDIATE` holds the database write lock for the whole transaction.
    for_update: "",
    // One statement on the single writer connection: atomic against other workers of
    // this process and, through SQLite's write lock, of other processes.
    skip_locked: "",
    append_error: "json_insert(errors, '$[#]', $6)",
    json_refuses_nul: false,
    text_list: "SELECT value FROM json_each($1)",
    doc_filter: |p| format!("json_extract(data, ${p}) IS json_extract(${}, '$')", p + 1),
    field_param: json_path,
};

/// SQLite JSON path of a top-level field (names are checked to be plain before this).
fn json_path(field: &str) -> String {
    format!("$.\"{field}\"")
}

/// Reads go to the read-only pool; writes to the write connection, under the writer's
/// lock.
#[async_trait]
impl Sql for SqliteStore {
    fn dialect(&self) -> &'static Dialect {
        &SQLITE
    }

    fn cut_rejected_at(&self) -> i32 {
        self.cut_rejected_at
    }

    async fn fetch<T: Send + 'static>(
        &self,
        on: On,
        st: &Statement<'_>,
        map: RowMap<T>,
    ) -> Result<Vec<T>, StoreError> {
        let q = sqlx_query::<Sqlite>(st);
        let rows = match on {
            On::Read => q.fetch_all(&self.reader).await?,
            On::Write => q.fetch_all(&mut *self.write().await?).await?,
        };
        map_rows(&rows, map)
    }

    async fn execute(&self, on: On, st: &Statement<'_>) -> Result<u64, StoreError> {
        let q = sqlx_query::<Sqlite>(st);
        let done = match on {
            On::Read => q.execute(&self.reader).await?,
            On::Write => q.execute(&mut *self.write().await?).await?,
        };
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_order(&self, o: &NewOrder) -> Result<Order, StoreError> {
        // On the writer, in `BEGIN IMMEDIATE … COMMIT` with every row read: an answer of
        // 201 only after a commit SQLite reported done (see `Writer::in_transaction`).
        self.tx_writer.create_order(o).await
    }

    async fn insert_notification(&self, n: &NewNotification) -> Result<i64, StoreError> {
        let mut ids = self.tx_writer.insert_notifications(&[n]).await?;
        ids.pop()
            .ok_or_else(|| StoreError::Invalid("the notification was not stored".into()))
    }

    async fn insert_notifications(
        &self,
        batch: &[&NewNotification],
    ) -> Result<Vec<i64>, StoreError> {
        self.tx_writer.insert_notifications(batch).await
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        Ok(Box::new(tx::SqliteTx::new(self.tx_writer.begin().await?)))
    }

    async fn ready(&self) -> Result<(), String> {
        self.ready
            .check(|| async {
                // A commit through the write path: it needs the write lock, a writable
                // file and, when the WAL must grow, room on the disk.
                sqlx::query(ready::UPSERT_HEALTH)
                    .bind(now_ms())
                    .execute(&mut *self.write().await?)
                    .await?;
                room_for_new_data(&self.path).await
            })
            .await
    }

    /// The pages of the file (free ones included: SQLite reuses them, the file does not
    /// shrink without `VACUUM`), plus the write-ahead log if there is one.
    async fn database_bytes(&self) -> Result<i64, StoreError> {
        let pages: i64 = sqlx::query_scalar(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        )
        .fetch_one(&self.reader)
        .await?;
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let wal = std::fs::metadata(&wal).map_or(0, |m| m.len());
        Ok(pages.saturating_add(i64::try_from(wal).unwrap_or(i64::MAX)))
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn close(&self) -> Result<(), StoreError> {
        // A clean stop leaves no WAL behind: the next start (or a copy of the file)
        // needs nothing but the database file, and a WAL on a nearly full disk is not
        // left to be replayed.
        self.wal_keeper.abort();
        if !self.tx_writer.checkpoint(Duration::from_secs(5)).await? {
            tracing::warn!("readers kept the WAL from being checkpointed at shutdown");
        }
        Ok(())
    }

    fn console(&self) -> &dyn ConsoleStore {
        self
    }

    fn plugin_history(&self) -> &dyn PluginHistoryStore {
        self
    }

    fn platform_certs(&self) -> &dyn PlatformCertStore {
        self
    }

    fn payments(&self) -> &dyn PaymentStore {
        self
    }

    fn audit(&self) -> &dyn AuditStore {
        self
    }

    fn shadow(&self) -> &dyn crate::store::shadow::ShadowStore {
        self
    }
}

/// `doc_inc` in one statement: create the document with the field, or add to an integer
/// field. The WHERE on DO UPDATE refuses non-integers, and a sum past 64 bits (SQLite
/// would make it a float); then no row comes back. `$5` is the field's JSON path.
const DOC_INC: &str = "INSERT INTO documents (collection, id, data, created_at, updated_at) \
     VALUES ($1, $2, json_object($3, $4), $6, $6) \
     ON CONFLICT (collection, id) DO UPDATE SET \
       data = json_set(documents.data, $5, COALESCE(json_extract(documents.data, $5), 0) + $4), \
       updated_at = $6 \
     WHERE (json_type(documents.data, $5) IS NULL OR json_type(documents.data, $5) = 'integer') \
       AND typeof(COALESCE(json_extract(documents.data, $5), 0) + $4) = 'integer' \
     RETURNING json_extract(data, $5) AS value";
