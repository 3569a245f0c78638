//! Persistence: orders, received notifications, handler documents and tasks.
//!
//! The pipeline and the plugin capabilities see only [`Store`] and [`Tx`]; SQLite (the
//! embedded default) and PostgreSQL implement them. A [`Tx`] is one database transaction
//! with savepoints, so several notifications can share one commit, each inside its own
//! savepoint, without the pipeline changing.

use async_trait::async_trait;
use serde::Serialize;

mod claims;
mod common;
pub mod console;
pub mod postgres;
pub mod ready;
pub mod refunds;
pub(crate) mod retention;
pub mod sqlite;

pub use refunds::{NewRefund, RefundRecord};

/// Unix time in milliseconds, the one time representation in the database.
pub type Millis = i64;

/// Now, in [`Millis`].
pub fn now_ms() -> Millis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 UTC text of a [`Millis`] time.
pub fn iso_time(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Parses a point in time given by a person or a script: RFC 3339
/// (`2026-09-03T13:15:40Z`, `2026-09-03T21:15:40+08:00`) or unix milliseconds
/// (`1788441340000`). The error says which forms are accepted.
pub fn parse_time(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<Millis>()
            .map_err(|_| format!("`{text}` is too large for unix milliseconds"));
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            format!(
                "`{text}` is not a time: use RFC 3339 (2026-09-03T13:15:40Z) or unix milliseconds"
            )
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("`{text}` is out of range"))
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no (connection, constraint, syntax...).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// SQLite said no, on the writer connection (see `sqlite_writer`).
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
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// Order status codes (SPEC §3), as stored.
pub mod status {
    /// Closed locally, never to be paid.
    pub const CLOSED: i32 = -1;
    /// Created, waiting for payment.
    pub const UNPAID: i32 = 0;
    /// Paid, handler ran.
    pub const PAID: i32 = 1;
    /// Part of the amount refunded.
    pub const PARTIALLY_REFUNDED: i32 = 2;
    /// Fully refunded.
    pub const REFUNDED: i32 = 3;

    /// Every status with its name, in order.
    pub const ALL: [(i32, &str); 5] = [
        (CLOSED, "closed"),
        (UNPAID, "unpaid"),
        (PAID, "paid"),
        (PARTIALLY_REFUNDED, "partially_refunded"),
        (REFUNDED, "refunded"),
    ];

    /// The name of a status code (`paid` for 1), or `unknown`.
    pub fn name(code: i32) -> &'static str {
        ALL.iter()
            .find(|(c, _)| *c == code)
            .map_or("unknown", |(_, n)| n)
    }

    /// A status given as its code (`1`) or its name (`paid`).
    pub fn parse(text: &str) -> Option<i32> {
        let text = text.trim();
        ALL.iter()
            .find(|(c, n)| *n == text || c.to_string() == text)
            .map(|(c, _)| *c)
    }
}

/// One order row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Order {
    /// The merchant's order number, unique.
    pub out_trade_no: String,
    /// The handler type, e.g. `recharge`.
    #[serde(rename = "type")]
    pub order_type: String,
    /// Provider name, e.g. `wechat-v2`.
    pub provider: String,
    /// Merchant account name.
    pub account: String,
    /// Amount due in fen.
    pub total_fee: i64,
    /// The paying user.
    pub user_id: String,
    /// Merchant JSON given at creation.
    pub custom: serde_json::Value,
    /// See [`status`].
    pub status: i32,
    /// Fen refunded so far.
    pub refund_fee: i64,
    /// The provider's transaction id, once paid.
    pub transaction_id: Option<String>,
    /// When the provider says it was paid.
    pub pay_date: Option<Millis>,
    /// When the paying notification was processed.
    pub notify_date: Option<Millis>,
    /// `pending`, `succeeded` or `failed`.
    pub handler_status: String,
    /// The handler's outcome JSON, or its error.
    pub handler_result: Option<serde_json::Value>,
    /// Which build ran last: `{type}@{version} sha256:{prefix}`.
    pub handler_version: Option<String>,
    /// The verified notification fields that paid the order.
    pub original_data: Option<serde_json::Value>,
    /// The stored notification that paid the order.
    pub paid_notification_id: Option<i64>,
    /// Creation time.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

/// What `POST /api/orders` inserts.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// Unique order number.
    pub out_trade_no: String,
    /// Handler type.
    pub order_type: String,
    /// Provider name.
    pub provider: String,
    /// Account name.
    pub account: String,
    /// Amount in fen, > 0.
    pub total_fee: i64,
    /// Paying user.
    pub user_id: String,
    /// Merchant JSON.
    pub custom: serde_json::Value,
}

/// Where a notification ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Stored, not yet finished (a crash here leaves it visible for replay).
    Received,
    /// Verified and marked its order paid; the handler succeeded.
    Paid,
    /// Verified, for an order that was already paid: nothing ran.
    Duplicate,
    /// Verified, reporting a non-payment state (closed, failed, waiting): nothing changed.
    Ignored,
    /// Verified and paid, but for an order closed locally: acknowledged, no handler ran.
    PaidAfterClose,
    /// Failed a check (signature, account, amount, unknown order, malformed).
    Rejected,
    /// A verified refund, applied to its order.
    Refunded,
    /// A verified refund that can never be applied (closed order, more than remains, a
    /// mismatched total, another transaction): acknowledged, nothing changed, listed for
    /// ops as needing attention.
    RefundUnapplied,
    /// A verified refund of an order that is unknown or not paid yet: nothing changed, the
    /// provider is told to retry, and it is applied as soon as the order's payment commits.
    RefundPending,
    /// Verified, but the handler failed or is missing: rolled back, the provider retries.
    Failed,
}

impl Verdict {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Received => "received",
            Verdict::Paid => "paid",
            Verdict::Duplicate => "duplicate",
            Verdict::Ignored => "ignored",
            Verdict::PaidAfterClose => "paid_after_close",
            Verdict::Rejected => "rejected",
            Verdict::Refunded => "refunded",
            Verdict::RefundUnapplied => "refund_unapplied",
            Verdict::RefundPending => "refund_pending",
            Verdict::Failed => "failed",
        }
    }

    /// Every verdict, in the order lists and help texts show them.
    pub const ALL: [Verdict; 10] = [
        Verdict::Received,
        Verdict::Paid,
        Verdict::Duplicate,
        Verdict::Ignored,
        Verdict::PaidAfterClose,
        Verdict::Rejected,
        Verdict::Refunded,
        Verdict::RefundUnapplied,
        Verdict::RefundPending,
        Verdict::Failed,
    ];

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A notification as received, before anything is checked.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Arrival time; stored, and the time freshness checks are made against.
    pub received_at: Millis,
    /// Provider from the URL.
    pub provider: String,
    /// Account from the URL, if the URL named one.
    pub account: Option<String>,
    /// Client address.
    pub remote_addr: Option<String>,
    /// Request headers (minus credentials), in order.
    pub headers: Vec<(String, String)>,
    /// The body exactly as received (possibly cut at the size limit; see `truncated`).
    pub body: Vec<u8>,
    /// The body was larger than the limit and only its start is kept.
    pub truncated: bool,
}

/// A stored notification.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationRecord {
    /// Id.
    pub id: i64,
    /// Provider from the URL.
    pub provider: String,
    /// Account, from the URL or as resolved by verification.
    pub account: Option<String>,
    /// Arrival time.
    pub received_at: Millis,
    /// Client address.
    pub remote_addr: Option<String>,
    /// Headers as received.
    pub headers: Vec<(String, String)>,
    /// Body as received.
    #[serde(serialize_with = "serialize_body")]
    pub body: Vec<u8>,
    /// Only the start of an oversized body is kept.
    pub truncated: bool,
    /// Where it ended up.
    pub verdict: Verdict,
    /// Why (rejection reason, handler error, ...).
    pub reason: Option<String>,
    /// The order it names, once parsed.
    pub out_trade_no: Option<String>,
    /// When processing finished.
    pub processed_at: Option<Millis>,
}

fn serialize_body<S: serde::Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}

/// Filters for listing notifications.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    /// Only this provider.
    pub provider: Option<String>,
    /// Only this order.
    pub out_trade_no: Option<String>,
    /// Only this verdict.
    pub verdict: Option<Verdict>,
    /// Only ids below this (cursor pagination, newest first).
    pub before_id: Option<i64>,
    /// Only those received at or after this time.
    pub since: Option<Millis>,
    /// Only those received before this time.
    pub until: Option<Millis>,
    /// At most this many (capped at 500).
    pub limit: u32,
}

/// Filters for listing orders, newest first (by `created_at`, then `out_trade_no`).
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    /// Only this status (see [`status`]).
    pub status: Option<i32>,
    /// Only this handler type.
    pub order_type: Option<String>,
    /// Only this user.
    pub user_id: Option<String>,
    /// Only orders after this one in the listing (the previous page's last order).
    pub before: Option<OrderCursor>,
    /// At most this many (capped at 500).
    pub limit: u32,
}

/// A position in the order listing: the last order of a page. Orders are listed by
/// creation time, and orders created in the same millisecond by number, so a page
/// boundary never skips or repeats an order even while new ones are created (an
/// offset would).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCursor {
    /// The order's `created_at`.
    pub created_at: Millis,
    /// The order's `out_trade_no`.
    pub out_trade_no: String,
}

impl OrderCursor {
    /// The cursor just past `order`.
    pub fn after(order: &Order) -> OrderCursor {
        OrderCursor {
            created_at: order.created_at,
            out_trade_no: order.out_trade_no.clone(),
        }
    }

    /// Parses the text form `{created_at}:{out_trade_no}` (order numbers never hold `:`).
    pub fn parse(text: &str) -> Result<OrderCursor, String> {
        let bad = || {
            format!(
                "cursor `{text}` is not `{{created_at}}:{{out_trade_no}}` of the last order seen"
            )
        };
        let (ms, no) = text.split_once(':').ok_or_else(bad)?;
        let created_at = ms.parse::<Millis>().map_err(|_| bad())?;
        if no.is_empty() {
            return Err(bad());
        }
        Ok(OrderCursor {
            created_at,
            out_trade_no: no.to_owned(),
        })
    }
}

impl std::fmt::Display for OrderCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.created_at, self.out_trade_no)
    }
}

/// A task the handler enqueued, as inserted.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The plugin type that owns it.
    pub plugin: String,
    /// Task name.
    pub name: String,
    /// JSON payload text.
    pub payload: String,
    /// The order it belongs to.
    pub out_trade_no: Option<String>,
    /// The order's provider (with `account`, selects the notify key when it runs).
    pub provider: Option<String>,
    /// The merchant account.
    pub account: Option<String>,
    /// Earliest run time.
    pub run_at: Millis,
}

/// A stored task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRecord {
    /// Id.
    pub id: i64,
    /// Owning plugin type.
    pub plugin: String,
    /// Task name.
    pub name: String,
    /// JSON payload text.
    pub payload: String,
    /// Order it belongs to.
    pub out_trade_no: Option<String>,
    /// The order's provider.
    pub provider: Option<String>,
    /// Merchant account.
    pub account: Option<String>,
    /// `pending`, `running`, `done` or `dead`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// Next run time.
    pub run_at: Millis,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// Every attempt's error, oldest first.
    pub errors: Vec<String>,
    /// Creation time.
    pub created_at: Millis,
}

/// How one attempt at a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// It succeeded.
    Done,
    /// It failed; run again at this time.
    Retry {
        /// The error, kept in the task's history.
        error: String,
        /// Next attempt.
        at: Millis,
    },
    /// It failed for the last time.
    Dead {
        /// The error, kept in the task's history.
        error: String,
    },
    /// It could not run at all (its plugin is not loaded); wait without using an attempt.
    Postpone {
        /// Why.
        reason: String,
        /// When to look again.
        at: Millis,
    },
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

/// The database: everything outside a payment transaction, and how to begin one.
#[async_trait]
pub trait Store: console::ConsoleStore + Send + Sync + 'static {
    /// Inserts a new order (status unpaid). [`StoreError::Conflict`] if the number exists.
    async fn create_order(&self, order: &NewOrder) -> Result<Order, StoreError>;
    /// The order, if it exists.
    async fn get_order(&self, out_trade_no: &str) -> Result<Option<Order>, StoreError>;
    /// The existing orders among `out_trade_nos` (distinct numbers), in no particular
    /// order: one read of many orders, a statement per 512 numbers, for the event streams'
    /// shared poller.
    async fn get_orders(&self, out_trade_nos: &[String]) -> Result<Vec<Order>, StoreError>;
    /// A version of each existing order among `out_trade_nos`, by number, in one
    /// statement whose answer is one text: changed whenever the order is (its
    /// `updated_at`, status, refunded amount, handler status, and the lengths of its
    /// handler result, handler version and paying notification). The event streams' poller
    /// compares these and reads in full only the orders whose version changed.
    async fn order_versions(
        &self,
        out_trade_nos: &[String],
    ) -> Result<std::collections::HashMap<String, String>, StoreError>;
    /// Durably stores a notification as received (verdict `received`) and returns its id.
    /// Committed before anything else is done with it.
    async fn insert_notification(&self, n: &NewNotification) -> Result<i64, StoreError>;
    /// Stores several notifications as received in one transaction (one commit); their
    /// ids in order. All or none are stored.
    async fn insert_notifications(
        &self,
        batch: &[&NewNotification],
    ) -> Result<Vec<i64>, StoreError>;
    /// Records where a notification ended up when no transaction is open (rejections).
    /// A `rejected` notification that names no order (it never verified) has its body cut
    /// to the store's limit (`[retention] rejected_body_bytes`) in the same statement.
    async fn finish_notification(
        &self,
        id: i64,
        verdict: Verdict,
        reason: Option<&str>,
        out_trade_no: Option<&str>,
        account: Option<&str>,
    ) -> Result<(), StoreError>;
    /// One stored notification.
    async fn get_notification(&self, id: i64) -> Result<Option<NotificationRecord>, StoreError>;
    /// Notifications, newest first.
    async fn list_notifications(
        &self,
        filter: &NotificationFilter,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    /// A handler document (admin view), outside any transaction.
    async fn get_document(&self, collection: &str, id: &str) -> Result<Option<String>, StoreError>;
    /// Orders matching `filter`, newest first.
    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<Order>, StoreError>;
    /// Closes (status 0 → -1) up to `limit` unpaid orders created before
    /// `created_before`, and returns their numbers. One conditional statement: an order
    /// paid meanwhile is left alone, and several processes may run it at once (on
    /// PostgreSQL each skips the rows another is closing or paying).
    async fn close_expired_orders(
        &self,
        created_before: Millis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// Claims up to `limit` unpaid orders created before `created_before` that are due
    /// for a provider query at `now` (never queried, or last claimed with a lease that
    /// ended), leasing them until `until`: across processes one order is claimed by one.
    async fn claim_reconcile(
        &self,
        created_before: Millis,
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError>;
    /// Like [`Store::claim_reconcile`], for closing expired orders at the provider: an
    /// order whose close failed is retried when its lease ends, behind the others.
    async fn claim_expired(
        &self,
        created_before: Millis,
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError>;
    /// Closes one order (status 0 → -1) if it is still unpaid; true if this call did.
    async fn close_order(&self, out_trade_no: &str) -> Result<bool, StoreError>;
    /// Notifications whose handler failed and whose order is still unpaid, oldest first:
    /// received at or after `since`, for orders of `order_type`, at most `limit`.
    async fn failed_unpaid_notifications(
        &self,
        since: Option<Millis>,
        order_type: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    /// Claims up to `limit` notifications still `received` that arrived before
    /// `received_before` and are not leased at `now` (never claimed, or their lease
    /// ended), oldest first, leasing them until `until`: across processes one is claimed
    /// by one (see `stuck.rs`).
    async fn claim_stuck(
        &self,
        received_before: Millis,
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    /// Whether the database can commit now; `Err` says why not. Proved by a write,
    /// bounded and cached (see [`ready`]).
    async fn ready(&self) -> Result<(), String>;
    /// How many tasks are `pending`, `running` and `dead` (a cheap grouped count for the
    /// queue-depth gauge; `done` tasks are history and not counted).
    async fn count_open_tasks(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Tasks, newest first, optionally only those with `status`.
    async fn list_tasks(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// One task.
    async fn get_task(&self, id: i64) -> Result<Option<TaskRecord>, StoreError>;
    /// Claims up to `limit` due tasks (pending and due, or running with an expired lease)
    /// for the worker holding `token` until `lease_until`. Across processes a task is
    /// claimed by one worker at a time.
    async fn claim_tasks(
        &self,
        token: &str,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Extends the lease of task `id`, claimed under `token`, to `lease_until`. False if
    /// the claim was lost (taken over by another worker after the lease ran out): the
    /// holder must then stop running it.
    async fn renew_task(
        &self,
        id: i64,
        token: &str,
        lease_until: Millis,
    ) -> Result<bool, StoreError>;
    /// Ends a claimed attempt: `Done`, retry at a time, or dead. Counts the attempt and
    /// keeps its error. False if the claim was lost (lease expired and taken over).
    async fn finish_task(&self, id: i64, token: &str, end: &TaskEnd) -> Result<bool, StoreError>;
    /// Puts a dead or pending task back in the queue to run now, with a fresh set of
    /// attempts (its error history is kept). False if no such task or it is running/done.
    async fn retry_task(&self, id: i64) -> Result<bool, StoreError>;
    /// The order's applied refunds, oldest first.
    async fn list_refunds(&self, out_trade_no: &str) -> Result<Vec<RefundRecord>, StoreError>;
    /// Begins a transaction that holds the write lock (SQLite) for its whole life.
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError>;
    /// Deletes up to `limit` of the oldest notifications that were rejected without ever
    /// verifying (no order number; see `store::retention`) and arrived before
    /// `received_before`; returns how many. One short statement: call it again while it
    /// returns `limit`. Several processes may run it at once.
    async fn prune_rejected(&self, received_before: Millis, limit: u32) -> Result<u64, StoreError>;
    /// How many notifications are stored `rejected` (verified or not).
    async fn count_rejected(&self) -> Result<i64, StoreError>;
    /// The database's size in bytes: SQLite's file plus its write-ahead log, PostgreSQL's
    /// whole database (`pg_database_size`, every schema in it).
    async fn database_bytes(&self) -> Result<i64, StoreError>;
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Called once when the host stops serving: leaves the database tidy (SQLite
    /// checkpoints and truncates its WAL). Nothing to do by default.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One open transaction. Dropping it without [`Tx::commit`] rolls it back.
#[async_trait]
pub trait Tx: Send {
    /// `SAVEPOINT name`.
    async fn savepoint(&mut self, name: &str) -> Result<(), StoreError>;
    /// `RELEASE SAVEPOINT name`: keeps what was done since.
    async fn release(&mut self, name: &str) -> Result<(), StoreError>;
    /// `ROLLBACK TO SAVEPOINT name` (and releases it): undoes what was done since.
    async fn rollback_to(&mut self, name: &str) -> Result<(), StoreError>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Reads the order and locks its row until the transaction ends (PostgreSQL
    /// `FOR UPDATE`; SQLite's transaction already holds the database write lock).
    async fn lock_order(&mut self, out_trade_no: &str) -> Result<Option<Order>, StoreError>;
    /// `status 0 → 1` only if still unpaid; true if this call made the change.
    async fn mark_paid(&mut self, paid: &MarkPaid<'_>) -> Result<bool, StoreError>;
    /// Reads several orders and locks their rows, in `out_trade_no` order, in one
    /// statement (a batch's orders; unknown numbers are simply absent).
    async fn lock_orders(&mut self, out_trade_nos: &[&str]) -> Result<Vec<Order>, StoreError>;
    /// Marks a batch's orders paid with their handlers' results, in one statement, each
    /// only if still unpaid; returns how many rows changed.
    async fn settle_paid(&mut self, paid: &[PaidOrder]) -> Result<u64, StoreError>;
    /// Records where a batch's notifications ended up, in one statement.
    async fn finish_notifications(
        &mut self,
        rows: &[NotificationVerdict<'_>],
    ) -> Result<(), StoreError>;
    /// [`Tx::settle_paid`] then [`Tx::finish_notifications`]: the end of a batch. A
    /// backend where a statement is a round trip to a server does both in one.
    async fn settle(
        &mut self,
        paid: &[PaidOrder],
        rows: &[NotificationVerdict<'_>],
    ) -> Result<u64, StoreError> {
        let marked = self.settle_paid(paid).await?;
        self.finish_notifications(rows).await?;
        Ok(marked)
    }
    /// Records the handler's result, and which build produced it, on the order.
    async fn set_handler_result(
        &mut self,
        out_trade_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Records where a notification ended up, inside this transaction.
    async fn finish_notification(
        &mut self,
        id: i64,
        verdict: Verdict,
        reason: Option<&str>,
        out_trade_no: Option<&str>,
        account: Option<&str>,
    ) -> Result<(), StoreError>;

    /// A document's JSON text.
    async fn doc_get(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError>;
    /// A document's JSON text, locking it (PostgreSQL `FOR UPDATE`) for a read-modify-write.
    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError>;
    /// Inserts a new document; [`DocError::Conflict`] if the id exists.
    async fn doc_insert(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError>;
    /// Creates or replaces a document.
    async fn doc_put(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError>;
    /// Atomically adds `delta` to an integer field, creating document and field as needed.
    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError>;
    /// Deletes a document; true if it existed.
    async fn doc_delete(&mut self, collection: &str, id: &str) -> Result<bool, DocError>;
    /// Documents whose top-level fields equal the given JSON values, ordered by id.
    async fn doc_query(
        &mut self,
        collection: &str,
        filters: &[(String, serde_json::Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, DocError>;

    /// Inserts a task (the outbox): it exists only if this transaction commits.
    async fn enqueue_task(&mut self, task: &NewTask) -> Result<i64, StoreError>;

    /// The applied refund with this merchant refund number, if any.
    async fn get_refund(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRecord>, StoreError>;
    /// Records the refund and adds it to the order (refunded total, status), unless a
    /// refund with its number exists: true if this call applied it. Call with the order
    /// locked ([`Tx::lock_order`]).
    async fn apply_refund(&mut self, refund: &NewRefund<'_>) -> Result<bool, StoreError>;
    /// Records the refund handler's result, and which build produced it, on the refund.
    async fn set_refund_handler_result(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError>;
}

/// Arguments of [`Tx::mark_paid`].
#[derive(Debug)]
pub struct MarkPaid<'a> {
    /// The order.
    pub out_trade_no: &'a str,
    /// The provider's transaction id.
    pub transaction_id: &'a str,
    /// When the provider says it was paid.
    pub pay_date: Millis,
    /// The notification that paid it.
    pub notification_id: i64,
    /// The verified fields, stored as `original_data`.
    pub original_data: &'a serde_json::Value,
}

/// One order of a batch that its handler paid: what [`Tx::settle_paid`] writes.
#[derive(Debug, Clone)]
pub struct PaidOrder {
    /// The order.
    pub out_trade_no: String,
    /// The provider's transaction id.
    pub transaction_id: String,
    /// When the provider says it was paid.
    pub pay_date: Millis,
    /// The notification that paid it.
    pub notification_id: i64,
    /// The verified fields as JSON text, stored as `original_data`.
    pub original_data: String,
    /// The handler's result as JSON text.
    pub handler_result: String,
    /// Which build produced it.
    pub handler_version: String,
}

/// Where one notification of a batch ended up: what [`Tx::finish_notifications`] writes.
#[derive(Debug, Clone)]
pub struct NotificationVerdict<'a> {
    /// The notification.
    pub id: i64,
    /// Its verdict.
    pub verdict: Verdict,
    /// Why, for rejections and failures.
    pub reason: Option<&'a str>,
    /// Its order, when known (kept as stored when `None`).
    pub out_trade_no: Option<&'a str>,
    /// Its verified account, when known (kept as stored when `None`).
    pub account: Option<&'a str>,
}

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

/// Checks a collection name: it is part of keys and log lines, so keep it plain.
pub fn valid_collection(name: &str) -> bool {
    crate::config::is_simple_name(name)
}

/// Checks a document field name used in `inc` and `query` (top-level, plain).
pub fn valid_field(name: &str) -> bool {
    crate::config::is_simple_name(name)
}

/// Checks a document id.
pub fn valid_doc_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(|c| c.is_control())
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

    #[test]
    fn times_parse_as_rfc3339_or_unix_millis() {
        assert_eq!(parse_time("1788441340000"), Ok(1_788_441_340_000));
        assert_eq!(parse_time("2026-09-03T13:15:40Z"), Ok(1_788_441_340_000));
        assert_eq!(
            parse_time("2026-09-03T21:15:40.5+08:00"),
            Ok(1_788_441_340_500)
        );
        assert_eq!(
            parse_time(&iso_time(1_788_441_340_123)),
            Ok(1_788_441_340_123)
        );
        for bad in ["", "yesterday", "2026-09-03", "99999999999999999999"] {
            assert!(parse_time(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn statuses_parse_by_code_or_name() {
        assert_eq!(status::parse("paid"), Some(status::PAID));
        assert_eq!(status::parse("-1"), Some(status::CLOSED));
        assert_eq!(status::parse("7"), None);
        assert_eq!(status::name(3), "refunded");
        assert_eq!(status::name(9), "unknown");
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = OrderCursor::parse("1788441340000:R2026|0001").expect("cursor");
        assert_eq!(c.created_at, 1_788_441_340_000);
        assert_eq!(c.out_trade_no, "R2026|0001");
        assert_eq!(OrderCursor::parse(&c.to_string()), Ok(c));
        for bad in ["", "R1", "x:R1", "17:", ":R1"] {
            assert!(OrderCursor::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
