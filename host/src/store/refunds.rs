//! Refunds in the database: the `refunds` table (one row per refund applied to an order,
//! unique per order and merchant refund number) and the order's refunded total.
//!
//! The statements are the same on both backends; [`refund_statements!`] expands them
//! for each, as `store::common` does for the rest.

use serde::Serialize;

use super::Millis;

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

pub(crate) const REFUND_COLUMNS: &str =
    "id, out_trade_no, out_refund_no, refund_id, provider, account, amount, refunded_total, \
     refunded_at, notification_id, handler_status, handler_result, handler_version, \
     original_data, created_at";

/// Expands, in the calling backend module, a module `refund_sql` with the refund
/// statements for the database type `$db`.
/// Records a refund unless its number exists for the order (then no row changes).
pub(crate) const INSERT_REFUND: &str =
    "INSERT INTO refunds (out_trade_no, out_refund_no, refund_id, provider, account, amount, \
     refunded_total, refunded_at, notification_id, handler_status, original_data, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11) \
     ON CONFLICT (out_trade_no, out_refund_no) DO NOTHING";
/// Adds a refund to its order, only if the order is as the caller saw it.
pub(crate) const ADD_TO_ORDER: &str =
    "UPDATE orders SET refund_fee = refund_fee + $2, status = $3, updated_at = $4 \
     WHERE out_trade_no = $1 AND refund_fee = $5 AND status IN (1, 2) \
       AND refund_fee + $2 <= total_fee";
/// The refund handler's result on a refund.
pub(crate) const SET_REFUND_HANDLER_RESULT: &str =
    "UPDATE refunds SET handler_status = $3, handler_result = $4, handler_version = $5 \
     WHERE out_trade_no = $1 AND out_refund_no = $2";

/// One refund of an order by its merchant refund number.
pub(crate) fn select_refund() -> String {
    format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE out_trade_no = $1 AND out_refund_no = $2")
}

macro_rules! refund_statements {
    ($db:ty) => {
        /// Refund statements (see `store::refunds`).
        // SQLite applies refunds on its own writer (`store::sqlite_writer`).
        #[allow(dead_code)]
        mod refund_sql {
            use sqlx::Executor;

            use $crate::store::common::{storable, StoreRow};
            use $crate::store::refunds::{self, NewRefund, RefundRecord, REFUND_COLUMNS};
            use $crate::store::{now_ms, StoreError};

            pub(super) async fn get_refund<'e, E: Executor<'e, Database = $db>>(
                e: E,
                out_trade_no: &str,
                out_refund_no: &str,
            ) -> Result<Option<RefundRecord>, StoreError> {
                let row = sqlx::query(&refunds::select_refund())
                    .bind(storable(out_trade_no))
                    .bind(storable(out_refund_no))
                    .fetch_optional(e)
                    .await?;
                row.as_ref().map(StoreRow::refund).transpose()
            }

            /// The order's applied refunds, oldest first.
            pub(super) async fn list_refunds<'e, E: Executor<'e, Database = $db>>(
                e: E,
                out_trade_no: &str,
            ) -> Result<Vec<RefundRecord>, StoreError> {
                let sql = format!(
                    "SELECT {REFUND_COLUMNS} FROM refunds WHERE out_trade_no = $1 ORDER BY id"
                );
                let rows = sqlx::query(&sql)
                    .bind(storable(out_trade_no))
                    .fetch_all(e)
                    .await?;
                rows.iter().map(StoreRow::refund).collect()
            }

            /// Inserts the refund row unless one with its number exists; true if inserted.
            pub(super) async fn insert_refund<'e, E: Executor<'e, Database = $db>>(
                e: E,
                r: &NewRefund<'_>,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(refunds::INSERT_REFUND)
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
                    .execute(e)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            /// Adds the refund to the order, only if its refunded total is still the one
            /// the caller read and it is paid or partly refunded; true if it changed.
            pub(super) async fn add_to_order<'e, E: Executor<'e, Database = $db>>(
                e: E,
                r: &NewRefund<'_>,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(refunds::ADD_TO_ORDER)
                    .bind(r.out_trade_no)
                    .bind(r.amount)
                    .bind(r.new_status)
                    .bind(now_ms())
                    .bind(r.refunded_before)
                    .execute(e)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            /// Records the refund handler's result on the refund row.
            pub(super) async fn set_refund_handler_result<'e, E: Executor<'e, Database = $db>>(
                e: E,
                out_trade_no: &str,
                out_refund_no: &str,
                handler_status: &str,
                result: &serde_json::Value,
                handler_version: Option<&str>,
            ) -> Result<(), StoreError> {
                sqlx::query(refunds::SET_REFUND_HANDLER_RESULT)
                    .bind(storable(out_trade_no))
                    .bind(storable(out_refund_no))
                    .bind(handler_status)
                    .bind(result.to_string())
                    .bind(handler_version.map(storable))
                    .execute(e)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use refund_statements;
