//! The store's domain types: orders, notifications, tasks and what the payment
//! transaction writes, as the pipeline, the API and the handlers see them.

use serde::Serialize;

use crate::time::Millis;

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
    /// The sub-merchant it is for, for an order of a WeChat Pay v3 partner account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_mchid: Option<String>,
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
    /// The sub-merchant, for a WeChat Pay v3 partner account's order.
    pub sub_mchid: Option<String>,
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

/// A console session as stored: the SHA-256 (hex) of the random id in the cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the session id, lower-case hex.
    pub id_hash: String,
    /// What the session is bound to: an HMAC keyed with the session id over the
    /// credential it was made with (see `http/console/session.rs`), hex.
    pub credential: String,
    /// The token every console form posts back.
    pub csrf_token: String,
    /// When it was created.
    pub created_at: Millis,
    /// When it stops being accepted.
    pub expires_at: Millis,
}

/// Where a page of a newest-first listing starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyset<C> {
    /// The newest rows.
    Newest,
    /// The rows just older than this key (the "next" page).
    Older(C),
    /// The rows just newer than this key (the "previous" page).
    Newer(C),
}

/// Filters for a page of tasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this status (`pending`, `running`, `done`, `dead`).
    pub status: Option<String>,
    /// Only the tasks of this order.
    pub out_trade_no: Option<String>,
    /// At most this many (capped at 500).
    pub limit: u32,
}

/// What happened to a plugin type's build (the `plugin_history` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginEventKind {
    /// A build of a type that was not serving started serving.
    Loaded,
    /// Another build replaced the serving one.
    Replaced,
    /// The type's file went away and the type stopped serving.
    Unloaded,
    /// A file was refused (the serving build, if any, keeps serving).
    Refused,
    /// The staged candidate (`{type}.next.wasm`) was promoted and serves.
    Promoted,
    /// The previous build (`{type}.prev.wasm`) was put back and serves.
    #[serde(rename = "rolled_back")]
    RolledBack,
}

impl PluginEventKind {
    /// Every kind, in the order help texts show them.
    pub const ALL: [PluginEventKind; 6] = [
        PluginEventKind::Loaded,
        PluginEventKind::Replaced,
        PluginEventKind::Unloaded,
        PluginEventKind::Refused,
        PluginEventKind::Promoted,
        PluginEventKind::RolledBack,
    ];

    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginEventKind::Loaded => "loaded",
            PluginEventKind::Replaced => "replaced",
            PluginEventKind::Unloaded => "unloaded",
            PluginEventKind::Refused => "refused",
            PluginEventKind::Promoted => "promoted",
            PluginEventKind::RolledBack => "rolled_back",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<PluginEventKind> {
        PluginEventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event of a plugin type's history, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEvent {
    /// When it happened.
    pub at: Millis,
    /// The order type (the file's stem).
    pub plugin_type: String,
    /// What happened.
    pub event: PluginEventKind,
    /// SHA-256 of the build's `.wasm` (the one loaded, or the one unloaded).
    pub sha256: Option<String>,
    /// Who signed the build (`principal SHA256:…`), when signatures are checked.
    pub signer: Option<String>,
    /// The version the build reports.
    pub version: Option<String>,
    /// Why a file was refused.
    pub reason: Option<String>,
    /// Which host process did it: `{hostname}:{pid}`.
    pub host: String,
}

/// A recorded [`PluginEvent`], with its id (ids grow with time: the paging key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginEventRecord {
    /// Id.
    pub id: i64,
    /// When it happened.
    pub at: Millis,
    /// The order type.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// What happened.
    pub event: PluginEventKind,
    /// SHA-256 of the build's `.wasm`.
    pub sha256: Option<String>,
    /// Who signed the build.
    pub signer: Option<String>,
    /// The version the build reports.
    pub version: Option<String>,
    /// Why a file was refused.
    pub reason: Option<String>,
    /// Which host process did it.
    pub host: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn plugin_events_round_trip_their_stored_text() {
        for k in PluginEventKind::ALL {
            assert_eq!(PluginEventKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).expect("json"),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(PluginEventKind::parse("Loaded"), None);
    }
}
