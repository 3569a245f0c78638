//! The columns each read selects, beside their mapping to domain types: one place for
//! every statement that returns orders, notifications or tasks (the concern modules, the
//! claims, the console's pages).

use super::statement::{json, required, Columns};
use super::types::{NotificationRecord, Order, TaskRecord, Verdict};
use super::StoreError;

/// Every column of `orders` that [`order_row`] reads.
pub(crate) const ORDER_COLUMNS: &str =
    "out_trade_no, type, provider, account, sub_mchid, total_fee, user_id, custom, \
     status, refund_fee, transaction_id, pay_date, notify_date, handler_status, handler_result, \
     handler_version, original_data, paid_notification_id, created_at, updated_at";

/// A row of [`ORDER_COLUMNS`] as an [`Order`].
pub(crate) fn order_row(r: &dyn Columns) -> Result<Order, StoreError> {
    Ok(Order {
        out_trade_no: required(r.text("out_trade_no")?, "out_trade_no")?,
        order_type: required(r.text("type")?, "type")?,
        provider: required(r.text("provider")?, "provider")?,
        account: required(r.text("account")?, "account")?,
        sub_mchid: r.text("sub_mchid")?,
        total_fee: required(r.int8("total_fee")?, "total_fee")?,
        user_id: required(r.text("user_id")?, "user_id")?,
        custom: json(r, "custom")?.unwrap_or(serde_json::Value::Null),
        status: required(r.int4("status")?, "status")?,
        refund_fee: required(r.int8("refund_fee")?, "refund_fee")?,
        transaction_id: r.text("transaction_id")?,
        pay_date: r.int8("pay_date")?,
        notify_date: r.int8("notify_date")?,
        handler_status: required(r.text("handler_status")?, "handler_status")?,
        handler_result: json(r, "handler_result")?,
        handler_version: r.text("handler_version")?,
        original_data: json(r, "original_data")?,
        paid_notification_id: r.int8("paid_notification_id")?,
        created_at: required(r.int8("created_at")?, "created_at")?,
        updated_at: required(r.int8("updated_at")?, "updated_at")?,
    })
}

/// Every column of `notifications` that [`notification_row`] reads.
pub(crate) const NOTIFICATION_COLUMNS: &str =
    "id, provider, account, received_at, remote_addr, headers, \
     body, truncated, verdict, reason, out_trade_no, processed_at";

/// A row of [`NOTIFICATION_COLUMNS`] as a [`NotificationRecord`].
pub(crate) fn notification_row(r: &dyn Columns) -> Result<NotificationRecord, StoreError> {
    let verdict = required(r.text("verdict")?, "verdict")?;
    Ok(NotificationRecord {
        id: required(r.int8("id")?, "id")?,
        provider: required(r.text("provider")?, "provider")?,
        account: r.text("account")?,
        received_at: required(r.int8("received_at")?, "received_at")?,
        remote_addr: r.text("remote_addr")?,
        headers: required(json(r, "headers")?, "headers")?,
        body: r.bytes("body")?,
        truncated: r.boolean("truncated")?,
        verdict: Verdict::parse(&verdict)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown verdict `{verdict}`")))?,
        reason: r.text("reason")?,
        out_trade_no: r.text("out_trade_no")?,
        processed_at: r.int8("processed_at")?,
    })
}

/// Every column of `tasks` that [`task_row`] reads.
pub(crate) const TASK_COLUMNS: &str =
    "id, plugin, name, payload, out_trade_no, provider, account, status, \
     attempts, run_at, last_error, errors, created_at";

/// A row of [`TASK_COLUMNS`] as a [`TaskRecord`].
pub(crate) fn task_row(r: &dyn Columns) -> Result<TaskRecord, StoreError> {
    Ok(TaskRecord {
        id: required(r.int8("id")?, "id")?,
        plugin: required(r.text("plugin")?, "plugin")?,
        name: required(r.text("name")?, "name")?,
        payload: required(r.text("payload")?, "payload")?,
        out_trade_no: r.text("out_trade_no")?,
        provider: r.text("provider")?,
        account: r.text("account")?,
        status: required(r.text("status")?, "status")?,
        attempts: required(r.int4("attempts")?, "attempts")?,
        run_at: required(r.int8("run_at")?, "run_at")?,
        last_error: r.text("last_error")?,
        errors: required(json(r, "errors")?, "task errors")?,
        created_at: required(r.int8("created_at")?, "created_at")?,
    })
}
