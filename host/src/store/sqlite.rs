//! The embedded SQLite backend (the default).
//!
//! One writer connection: SQLite allows one writer at a time anyway, and giving every
//! write transaction the same connection with `BEGIN IMMEDIATE` means a transaction
//! never fails half-way with `SQLITE_BUSY` when it upgrades from reading to writing.
//! Reads that are not part of a payment use a separate pool and see the last commit
//! (WAL).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }
}

const ORDER_COLUMNS: &str = "out_trade_no, type, provider, account, total_fee, user_id, custom, \
     status, transaction_id, pay_date, notify_date, handler_status, handler_result, \
     handler_version, original_data, paid_notification_id, created_at, updated_at";

const NOTIFICATION_COLUMNS: &str = "id, provider, account, received_at, remote_addr, headers, \
     body, truncated, verdict, reason, out_trade_no, processed_at";

const TASK_COLUMNS: &str = "id, plugin, name, payload, out_trade_no, provider, account, status, \
     attempts, run_at, last_error, errors, created_at";

fn json_column(row: &SqliteRow, name: &str) -> Result<Option<serde_json::Value>, StoreError> {
    let text: Option<String> = row.try_get(name)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
    })
    .transpose()
}

fn order_from_row(row: &SqliteRow) -> Result<Order, StoreError> {
    Ok(Order {
        out_trade_no: row.try_get("out_trade_no")?,
        order_type: row.try_get("type")?,
        provider: row.try_get("provider")?,
        account: row.try_get("account")?,
        total_fee: row.try_get("total_fee")?,
        user_id: row.try_get("user_id")?,
        custom: json_column(row, "custom")?.unwrap_or(serde_json::Value::Null),
        status: row.try_get("status")?,
        transaction_id: row.try_get("transaction_id")?,
        pay_date: row.try_get("pay_date")?,
        notify_date: row.try_get("notify_date")?,
        handler_status: row.try_get("handler_status")?,
        handler_result: json_column(row, "handler_result")?,
        handler_version: row.try_get("handler_version")?,
        original_data: json_column(row, "original_data")?,
        paid_notification_id: row.try_get("paid_notification_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn notification_from_row(row: &SqliteRow) -> Result<NotificationRecord, StoreError> {
    let headers: String = row.try_get("headers")?;
    let verdict: String = row.try_get("verdict")?;
    Ok(NotificationRecord {
        id: row.try_get("id")?,
        provider: row.try_get("provider")?,
        account: row.try_get("account")?,
        received_at: row.try_get("received_at")?,
        remote_addr: row.try_get("remote_addr")?,
        headers: serde_json::from_str(&headers)
            .map_err(|e| StoreError::Corrupt(format!("headers: {e}")))?,
        body: row.try_get("body")?,
        truncated: row.try_get("truncated")?,
        verdict: Verdict::parse(&verdict)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown verdict `{verdict}`")))?,
        reason: row.try_get("reason")?,
        out_trade_no: row.try_get("out_trade_no")?,
        processed_at: row.try_get("processed_at")?,
    })
}

fn task_from_row(row: &SqliteRow) -> Result<TaskRecord, StoreError> {
    let errors: String = row.try_get("errors")?;
    Ok(TaskRecord {
        id: row.try_get("id")?,
        plugin: row.try_get("plugin")?,
        name: row.try_get("name")?,
        payload: row.try_get("payload")?,
        out_trade_no: row.try_get("out_trade_no")?,
        provider: row.try_get("provider")?,
        account: row.try_get("account")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        run_at: row.try_get("run_at")?,
        last_error: row.try_get("last_error")?,
        errors: serde_json::from_str(&errors)
            .map_err(|e| StoreError::Corrupt(format!("task errors: {e}")))?,
        created_at: row.try_get("created_at")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// SQLite JSON path of a top-level field (names are checked to be plain before this).
fn json_path(field: &str) -> String {
    format!("$.\"{field}\"")
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_order(&self, o: &NewOrder) -> Result<Order, StoreError> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO orders (out_trade_no, type, provider, account, total_fee, user_id, custom, \
             created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) RETURNING {ORDER_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&o.out_trade_no)
            .bind(&o.order_type)
            .bind(&o.provider)
            .bind(&o.account)
            .bind(o.total_fee)
            .bind(&o.user_id)
            .bind(o.custom.to_string())
            .bind(now)
            .fetch_one(&self.writer)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("order {} already exists", o.out_trade_no))
                } else {
                    e.into()
                }
            })?;
        order_from_row(&row)
    }

    async fn get_order(&self, out_trade_no: &str) -> Result<Option<Order>, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE out_trade_no = ?1");
        let row = sqlx::query(&sql)
            .bind(out_trade_no)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    async fn insert_notification(&self, n: &NewNotification) -> Result<i64, StoreError> {
        let headers = serde_json::to_string(&n.headers)
            .map_err(|e| StoreError::Invalid(format!("headers: {e}")))?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO notifications (provider, account, received_at, remote_addr, headers, body, truncated) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
        )
        .bind(&n.provider)
        .bind(&n.account)
        .bind(now_ms())
        .bind(&n.remote_addr)
        .bind(headers)
        .bind(&n.body)
        .bind(n.truncated)
        .fetch_one(&self.writer)
        .await?;
        Ok(id)
    }

    async fn finish_notification(
        &self,
        id: i64,
        verdict: Verdict,
        reason: Option<&str>,
        out_trade_no: Option<&str>,
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        finish_notification(&self.writer, id, verdict, reason, out_trade_no, account).await
    }

    async fn get_notification(&self, id: i64) -> Result<Option<NotificationRecord>, StoreError> {
        let sql = format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = ?1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.reader).await?;
        row.as_ref().map(notification_from_row).transpose()
    }

    async fn list_notifications(
        &self,
        f: &NotificationFilter,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let sql = format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications \
             WHERE (?1 IS NULL OR provider = ?1) AND (?2 IS NULL OR out_trade_no = ?2) \
               AND (?3 IS NULL OR verdict = ?3) AND (?4 IS NULL OR id < ?4) \
             ORDER BY id DESC LIMIT ?5"
        );
        let rows = sqlx::query(&sql)
            .bind(&f.provider)
            .bind(&f.out_trade_no)
            .bind(f.verdict.map(Verdict::as_str))
            .bind(f.before_id)
            .bind(i64::from(f.limit.clamp(1, 500)))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn get_document(&self, collection: &str, id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT data FROM documents WHERE collection = ?1 AND id = ?2")
                .bind(collection)
                .bind(id)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn list_tasks(&self, status: Option<&str>, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR status = ?1) ORDER BY id DESC LIMIT ?2"
        );
        let rows = sqlx::query(&sql)
            .bind(status)
            .bind(i64::from(limit.clamp(1, 500)))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn get_task(&self, id: i64) -> Result<Option<TaskRecord>, StoreError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.reader).await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn claim_tasks(
        &self,
        token: &str,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        // One statement on the single writer connection: atomic against other workers
        // of this process and, through SQLite's write lock, of other processes.
        let sql = format!(
            "UPDATE tasks SET status = 'running', claim_token = ?1, locked_until = ?3, updated_at = ?2 \
             WHERE id IN (SELECT id FROM tasks \
                          WHERE (status = 'pending' AND run_at <= ?2) \
                             OR (status = 'running' AND locked_until <= ?2) \
                          ORDER BY run_at, id LIMIT ?4) \
             RETURNING {TASK_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(token)
            .bind(now)
            .bind(lease_until)
            .bind(i64::from(limit))
            .fetch_all(&self.writer)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn finish_task(&self, id: i64, token: &str, end: &TaskEnd) -> Result<bool, StoreError> {
        let now = now_ms();
        let (status, attempts, run_at, error) = match end {
            TaskEnd::Done => ("done", 1, None, None),
            TaskEnd::Retry { error, at } => ("pending", 1, Some(*at), Some(error.as_str())),
            TaskEnd::Dead { error } => ("dead", 1, None, Some(error.as_str())),
            TaskEnd::Postpone { reason, at } => ("pending", 0, Some(*at), Some(reason.as_str())),
        };
        let entry = error.map(|e| format!("{} {e}", crate::store::iso_time(now)));
        let done = sqlx::query(
            "UPDATE tasks SET status = ?3, attempts = attempts + ?4, run_at = COALESCE(?5, run_at), \
               last_error = COALESCE(?6, last_error), \
               errors = CASE WHEN ?6 IS NULL THEN errors ELSE json_insert(errors, '$[#]', ?6) END, \
               claim_token = NULL, locked_until = NULL, updated_at = ?7 \
             WHERE id = ?1 AND claim_token = ?2 AND status = 'running'",
        )
        .bind(id)
        .bind(token)
        .bind(status)
        .bind(attempts)
        .bind(run_at)
        .bind(entry)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn retry_task(&self, id: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE tasks SET status = 'pending', attempts = 0, run_at = ?2, updated_at = ?2 \
             WHERE id = ?1 AND status IN ('dead', 'pending')",
        )
        .bind(id)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Box::new(SqliteTx { tx }))
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

async fn finish_notification<'e, E: sqlx::Executor<'e, Database = Sqlite>>(
    executor: E,
    id: i64,
    verdict: Verdict,
    reason: Option<&str>,
    out_trade_no: Option<&str>,
    account: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE notifications SET verdict = ?2, reason = ?3, \
         out_trade_no = COALESCE(?4, out_trade_no), account = COALESCE(?5, account), processed_at = ?6 \
         WHERE id = ?1",
    )
    .bind(id)
    .bind(verdict.as_str())
    .bind(reason)
    .bind(out_trade_no)
    .bind(account)
    .bind(now_ms())
    .execute(executor)
    .await?;
    Ok(())
}

/// An open SQLite write transaction.
struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
}

fn check_savepoint(name: &str) -> Result<(), StoreError> {
    if crate::config::is_simple_name(name) && !name.contains('-') {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("bad savepoint name `{name}`")))
    }
}

#[async_trait]
impl Tx for SqliteTx {
    async fn savepoint(&mut self, name: &str) -> Result<(), StoreError> {
        check_savepoint(name)?;
        sqlx::query(&format!("SAVEPOINT {name}")).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn release(&mut self, name: &str) -> Result<(), StoreError> {
        check_savepoint(name)?;
        sqlx::query(&format!("RELEASE SAVEPOINT {name}")).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn rollback_to(&mut self, name: &str) -> Result<(), StoreError> {
        check_savepoint(name)?;
        sqlx::query(&format!("ROLLBACK TO SAVEPOINT {name}"))
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(&format!("RELEASE SAVEPOINT {name}")).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    async fn lock_order(&mut self, out_trade_no: &str) -> Result<Option<Order>, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE out_trade_no = ?1");
        let row = sqlx::query(&sql)
            .bind(out_trade_no)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    async fn mark_paid(&mut self, p: &MarkPaid<'_>) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE orders SET status = 1, transaction_id = ?2, pay_date = ?3, notify_date = ?4, \
             paid_notification_id = ?5, original_data = ?6, updated_at = ?4 \
             WHERE out_trade_no = ?1 AND status = 0",
        )
        .bind(p.out_trade_no)
        .bind(p.transaction_id)
        .bind(p.pay_date)
        .bind(now)
        .bind(p.notification_id)
        .bind(p.original_data.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_handler_result(
        &mut self,
        out_trade_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE orders SET handler_status = ?2, handler_result = ?3, handler_version = ?4, updated_at = ?5 \
             WHERE out_trade_no = ?1",
        )
        .bind(out_trade_no)
        .bind(handler_status)
        .bind(result.to_string())
        .bind(handler_version)
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?;
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
        finish_notification(&mut *self.tx, id, verdict, reason, out_trade_no, account).await
    }

    async fn doc_get(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError> {
        Ok(
            sqlx::query_scalar("SELECT data FROM documents WHERE collection = ?1 AND id = ?2")
                .bind(collection)
                .bind(id)
                .fetch_optional(&mut *self.tx)
                .await?,
        )
    }

    async fn doc_get_for_update(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError> {
        // BEGIN IMMEDIATE already holds the database write lock.
        self.doc_get(collection, id).await
    }

    async fn doc_insert(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO documents (collection, id, data, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
        )
        .bind(collection)
        .bind(id)
        .bind(data)
        .bind(now)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                DocError::Conflict(format!("{collection}/{id}"))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    async fn doc_put(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError> {
        sqlx::query(
            "INSERT INTO documents (collection, id, data, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
        )
        .bind(collection)
        .bind(id)
        .bind(data)
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError> {
        // One statement: create the document with the field, or add to an integer field.
        // The WHERE on DO UPDATE refuses non-integers; then no row comes back.
        let value: Option<i64> = sqlx::query_scalar(
            "INSERT INTO documents (collection, id, data, created_at, updated_at) \
             VALUES (?1, ?2, json_object(?3, ?4), ?6, ?6) \
             ON CONFLICT (collection, id) DO UPDATE SET \
               data = json_set(documents.data, ?5, COALESCE(json_extract(documents.data, ?5), 0) + ?4), \
               updated_at = ?6 \
             WHERE json_type(documents.data, ?5) IS NULL OR json_type(documents.data, ?5) = 'integer' \
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

    async fn doc_delete(&mut self, collection: &str, id: &str) -> Result<bool, DocError> {
        let done = sqlx::query("DELETE FROM documents WHERE collection = ?1 AND id = ?2")
            .bind(collection)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn doc_query(
        &mut self,
        collection: &str,
        filters: &[(String, serde_json::Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, DocError> {
        let mut sql = String::from("SELECT id, data FROM documents WHERE collection = ?1");
        for i in 0..filters.len() {
            let path = 2 + 2 * i;
            sql.push_str(&format!(
                " AND json_extract(data, ?{path}) IS json_extract(?{}, '$')",
                path + 1
            ));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT ?{}", 2 + 2 * filters.len()));
        let mut q = sqlx::query(&sql).bind(collection);
        for (field, value) in filters {
            q = q.bind(json_path(field)).bind(value.to_string());
        }
        let rows = q.bind(i64::from(limit)).fetch_all(&mut *self.tx).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("data")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DocError::from)
    }

    async fn enqueue_task(&mut self, t: &NewTask) -> Result<i64, StoreError> {
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tasks (plugin, name, payload, out_trade_no, provider, account, run_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) RETURNING id",
        )
        .bind(&t.plugin)
        .bind(&t.name)
        .bind(&t.payload)
        .bind(&t.out_trade_no)
        .bind(&t.provider)
        .bind(&t.account)
        .bind(t.run_at)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(id)
    }
}
