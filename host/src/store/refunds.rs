//! Refunds in the database: the `refunds` table (one row per refund applied to an order,
//! unique per order and merchant refund number) and the order's refunded total.
//!
//! The statements are the same on both backends, and on SQLite's writer.

use serde::Serialize;

use super::statement::{json, required, storable, Columns, Statement};
use super::StoreError;
use crate::time::{now_ms, Millis};

/// A refund to apply to an order, with the order's new refunded total and status.
#[derive(Debug)]
pub struct NewRefund<'a> {
    /// The order.
    pub out_trade_no: &'a str,
    /// The merchant's refund number (with the order, unique).
    pub out_refund_no: &'a str,
    /// The provider's refund id, or empty.
    pub refund_id: &'a str,
    /// Provider name.
    pub provider: &'a str,
    /// Account name.
    pub account: &'a str,
    /// Fen refunded by this refund (> 0).
    pub amount: i64,
    /// The order's refunded total before this refund, as read under the order's lock.
    pub refunded_before: i64,
    /// The order's status after it: partially refunded or refunded.
    pub new_status: i32,
    /// When the provider says it succeeded.
    pub refunded_at: Option<Millis>,
    /// The notification that reported it.
    pub notification_id: i64,
    /// The verified notification fields.
    pub original_data: &'a serde_json::Value,
}

/// An applied refund.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RefundRecord {
    /// Id.
    pub id: i64,
    /// The order.
    pub out_trade_no: String,
    /// The merchant's refund number.
    pub out_refund_no: String,
    /// The provider's refund id, or empty.
    pub refund_id: String,
    /// Provider name.
    pub provider: String,
    /// Account name.
    pub account: String,
    /// Fen refunded by this refund.
    pub amount: i64,
    /// Fen refunded on the order after this refund.
    pub refunded_total: i64,
    /// When the provider says it succeeded.
    pub refunded_at: Option<Millis>,
    /// The notification that reported it.
    pub notification_id: i64,
    /// `succeeded`, or `no refund handler` when the type's handler has no `handle-refunded`.
    pub handler_status: String,
    /// The refund handler's outcome JSON.
    pub handler_result: Option<serde_json::Value>,
    /// Which build ran: `{type}@{version} sha256:{prefix}`.
    pub handler_version: Option<String>,
    /// The verified notification fields.
    pub original_data: serde_json::Value,
    /// When it was applied.
    pub created_at: Millis,
}

/// Every column of `refunds` that [`refund_row`] reads.
pub(crate) const REFUND_COLUMNS: &str =
    "id, out_trade_no, out_refund_no, refund_id, provider, account, amount, refunded_total, \
     refunded_at, notification_id, handler_status, handler_result, handler_version, \
     original_data, created_at";

/// A row of [`REFUND_COLUMNS`] as a [`RefundRecord`].
pub(crate) fn refund_row(r: &dyn Columns) -> Result<RefundRecord, StoreError> {
    Ok(RefundRecord {
        id: required(r.int8("id")?, "id")?,
        out_trade_no: required(r.text("out_trade_no")?, "out_trade_no")?,
        out_refund_no: required(r.text("out_refund_no")?, "out_refund_no")?,
        refund_id: required(r.text("refund_id")?, "refund_id")?,
        provider: required(r.text("provider")?, "provider")?,
        account: required(r.text("account")?, "account")?,
        amount: required(r.int8("amount")?, "amount")?,
        refunded_total: required(r.int8("refunded_total")?, "refunded_total")?,
        refunded_at: r.int8("refunded_at")?,
        notification_id: required(r.int8("notification_id")?, "notification_id")?,
        handler_status: required(r.text("handler_status")?, "handler_status")?,
        handler_result: json(r, "handler_result")?,
        handler_version: r.text("handler_version")?,
        original_data: json(r, "original_data")?.unwrap_or(serde_json::Value::Null),
        created_at: required(r.int8("created_at")?, "created_at")?,
    })
}

/// One refund of an order by its merchant refund number.
pub(crate) fn select_refund<'a>(out_trade_no: &'a str, out_refund_no: &'a str) -> Statement<'a> {
    Statement::new(format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE out_trade_no = $1 AND out_refund_no = $2"
    ))
    .bind(storable(out_trade_no))
    .bind(storable(out_refund_no))
}

/// The order's applied refunds, oldest first.
pub(crate) fn list_refunds(out_trade_no: &str) -> Statement<'_> {
    Statement::new(format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE out_trade_no = $1 ORDER BY id"
    ))
    .bind(storable(out_trade_no))
}

/// Records a refund unless its number exists for the order (then no row changes).
pub(crate) fn insert_refund<'a>(r: &NewRefund<'a>) -> Statement<'a> {
    Statement::new(
        "INSERT INTO refunds (out_trade_no, out_refund_no, refund_id, provider, account, amount, \
         refunded_total, refunded_at, notification_id, handler_status, original_data, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11) \
         ON CONFLICT (out_trade_no, out_refund_no) DO NOTHING",
    )
    .bind(storable(r.out_trade_no))
    .bind(storable(r.out_refund_no))
    .bind(storable(r.refund_id))
    .bind(r.provider)
    .bind(r.account)
    .bind(r.amount)
    .bind(r.refunded_before + r.amount)
    .bind(r.refunded_at)
    .bind(r.notification_id)
    .bind(r.original_data.to_string())
    .bind(now_ms())
}

/// Adds a refund to its order, only if the order's refunded total is still the one the
/// caller read and it is paid or partly refunded.
pub(crate) fn add_to_order<'a>(r: &NewRefund<'a>) -> Statement<'a> {
    Statement::new(
        "UPDATE orders SET refund_fee = refund_fee + $2, status = $3, updated_at = $4 \
         WHERE out_trade_no = $1 AND refund_fee = $5 AND status IN (1, 2) \
           AND refund_fee + $2 <= total_fee",
    )
    .bind(r.out_trade_no)
    .bind(r.amount)
    .bind(r.new_status)
    .bind(now_ms())
    .bind(r.refunded_before)
}

/// What `apply_refund` answers when [`add_to_order`] changed `changed` rows: the caller
/// holds the order's lock, so an order that still moved is refused.
pub(crate) fn added(changed: u64, r: &NewRefund<'_>) -> Result<bool, StoreError> {
    if changed == 1 {
        Ok(true)
    } else {
        Err(StoreError::Invalid(format!(
            "order {} changed while refund {} was applied to it",
            r.out_trade_no, r.out_refund_no
        )))
    }
}

/// The refund handler's result, and which build produced it, on a refund.
pub(crate) fn set_refund_handler_result<'a>(
    out_trade_no: &'a str,
    out_refund_no: &'a str,
    handler_status: &'a str,
    result: &serde_json::Value,
    handler_version: Option<&'a str>,
) -> Statement<'a> {
    Statement::new(
        "UPDATE refunds SET handler_status = $3, handler_result = $4, handler_version = $5 \
         WHERE out_trade_no = $1 AND out_refund_no = $2",
    )
    .bind(storable(out_trade_no))
    .bind(storable(out_refund_no))
    .bind(handler_status)
    .bind(result.to_string())
    .bind(handler_version.map(storable))
}
