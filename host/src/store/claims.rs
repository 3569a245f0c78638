//! Statements of the reconciliation, provider-close, bulk-replay and stuck-notification
//! jobs, written once for both backends.
//!
//! Claims are leases in a column of the order (`reconcile_after`, `close_after`): one
//! `UPDATE … WHERE out_trade_no IN (SELECT … LIMIT n [FOR UPDATE SKIP LOCKED])` takes the
//! due orders and moves their next turn past the lease, so several host processes on one
//! PostgreSQL never query or close the same order at once (SQLite has one writer), and an
//! order whose call failed goes to the back of the queue instead of blocking it.
//!
//! Notifications left `received` are claimed the same way, with their own lease column
//! (`notifications.redrive_after`), by [`crate::stuck`].

use super::rows::{NOTIFICATION_COLUMNS, ORDER_COLUMNS};
use super::statement::{Dialect, Statement};
use super::types::{NotificationRecord, Order};
use super::StoreError;
use crate::time::{now_ms, Millis};

/// Claims up to `limit` unpaid orders created before `created_before` whose `column`
/// lease is due at `now`, leasing them until `until`.
pub(crate) fn claim_orders(
    d: &Dialect,
    column: &str,
    created_before: Millis,
    now: Millis,
    until: Millis,
    limit: u32,
) -> Statement<'static> {
    Statement::new(format!(
        "UPDATE orders SET {column} = $3 \
         WHERE status = 0 AND out_trade_no IN (SELECT out_trade_no FROM orders \
                      WHERE status = 0 AND created_at < $1 \
                        AND ({column} IS NULL OR {column} <= $2) \
                      ORDER BY created_at LIMIT $4{}) \
         RETURNING {ORDER_COLUMNS}",
        d.skip_locked
    ))
    .bind(created_before)
    .bind(now)
    .bind(until)
    .bind(i64::from(limit.max(1)))
}

/// Claimed orders oldest first (`RETURNING` promises no order).
pub(crate) fn by_creation(mut orders: Vec<Order>) -> Result<Vec<Order>, StoreError> {
    orders.sort_by_key(|o| o.created_at);
    Ok(orders)
}

/// Claims up to `limit` notifications still `received` that arrived before
/// `received_before` and whose `redrive_after` lease is due at `now`, leasing them until
/// `until`. The outer `verdict` test is checked again on the locked row: one finished
/// meanwhile by its own pipeline is not taken.
pub(crate) fn claim_stuck(
    d: &Dialect,
    received_before: Millis,
    now: Millis,
    until: Millis,
    limit: u32,
) -> Statement<'static> {
    Statement::new(format!(
        "UPDATE notifications SET redrive_after = $3 \
         WHERE verdict = 'received' AND id IN (SELECT id FROM notifications \
                      WHERE verdict = 'received' AND received_at < $1 \
                        AND (redrive_after IS NULL OR redrive_after <= $2) \
                      ORDER BY id LIMIT $4{}) \
         RETURNING {NOTIFICATION_COLUMNS}",
        d.skip_locked
    ))
    .bind(received_before)
    .bind(now)
    .bind(until)
    .bind(i64::from(limit.max(1)))
}

/// Claimed notifications oldest first.
pub(crate) fn by_id(mut claimed: Vec<NotificationRecord>) -> Vec<NotificationRecord> {
    claimed.sort_by_key(|n| n.id);
    claimed
}

/// Closes one order (0 → -1) if still unpaid.
pub(crate) fn close_order(out_trade_no: &str) -> Statement<'_> {
    Statement::new(
        "UPDATE orders SET status = -1, updated_at = $2 WHERE out_trade_no = $1 AND status = 0",
    )
    .bind(out_trade_no)
    .bind(now_ms())
}

/// Failed notifications whose order is still unpaid, oldest first.
pub(crate) fn failed_unpaid(
    since: Option<Millis>,
    order_type: Option<&str>,
    limit: u32,
) -> Statement<'_> {
    Statement::new(format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications \
         WHERE verdict = 'failed' AND ($1 IS NULL OR received_at >= $1) \
           AND out_trade_no IN (SELECT out_trade_no FROM orders \
                                WHERE status = 0 AND ($2 IS NULL OR type = $2)) \
         ORDER BY id LIMIT $3"
    ))
    .bind(since)
    .bind(order_type)
    .bind(i64::from(limit.clamp(1, 10_000)))
}
