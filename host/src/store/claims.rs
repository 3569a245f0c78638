//! Statements of the reconciliation, provider-close, bulk-replay and stuck-notification
//! jobs, shared by both backends like `store::common`'s (expanded beside them by
//! [`claim_statements!`]).
//!
//! Claims are leases in a column of the order (`reconcile_after`, `close_after`): one
//! `UPDATE … WHERE out_trade_no IN (SELECT … LIMIT n [FOR UPDATE SKIP LOCKED])` takes the
//! due orders and moves their next turn past the lease, so several host processes on one
//! PostgreSQL never query or close the same order at once (SQLite has one writer), and an
//! order whose call failed goes to the back of the queue instead of blocking it.
//!
//! Notifications left `received` are claimed the same way, with their own lease column
//! (`notifications.redrive_after`), by [`crate::stuck`].

/// The claim statements for backend `$db`, as module `claims`.
macro_rules! claim_statements {
    ($db:ty) => {
        /// Reconciliation, provider-close and bulk-replay statements (see `store::claims`).
        mod claims {
            use $crate::store::common::{Dialect, StoreRow, NOTIFICATION_COLUMNS, ORDER_COLUMNS};
            use $crate::store::{now_ms, NotificationRecord, Order, StoreError};

            /// Claims up to `limit` unpaid orders created before `created_before` whose
            /// `column` lease is due at `now`, leasing them until `until`.
            pub(super) async fn claim<'e, E: sqlx::Executor<'e, Database = $db>>(
                e: E,
                column: &str,
                created_before: i64,
                now: i64,
                until: i64,
                limit: u32,
            ) -> Result<Vec<Order>, StoreError> {
                let sql = format!(
                    "UPDATE orders SET {column} = $3 \
                     WHERE status = 0 AND out_trade_no IN (SELECT out_trade_no FROM orders \
                                  WHERE status = 0 AND created_at < $1 \
                                    AND ({column} IS NULL OR {column} <= $2) \
                                  ORDER BY created_at LIMIT $4{}) \
                     RETURNING {ORDER_COLUMNS}",
                    <$db as Dialect>::SKIP_LOCKED
                );
                let rows = sqlx::query(&sql)
                    .bind(created_before)
                    .bind(now)
                    .bind(until)
                    .bind(i64::from(limit.max(1)))
                    .fetch_all(e)
                    .await?;
                let mut orders: Vec<Order> =
                    rows.iter().map(StoreRow::order).collect::<Result<_, _>>()?;
                orders.sort_by_key(|o| o.created_at);
                Ok(orders)
            }

            /// Claims up to `limit` notifications still `received` that arrived before
            /// `received_before` and whose `redrive_after` lease is due at `now`, leasing
            /// them until `until`. The outer `verdict` test is checked again on the
            /// locked row: one finished meanwhile by its own pipeline is not taken.
            pub(super) async fn claim_stuck<'e, E: sqlx::Executor<'e, Database = $db>>(
                e: E,
                received_before: i64,
                now: i64,
                until: i64,
                limit: u32,
            ) -> Result<Vec<NotificationRecord>, StoreError> {
                let sql = format!(
                    "UPDATE notifications SET redrive_after = $3 \
                     WHERE verdict = 'received' AND id IN (SELECT id FROM notifications \
                                  WHERE verdict = 'received' AND received_at < $1 \
                                    AND (redrive_after IS NULL OR redrive_after <= $2) \
                                  ORDER BY id LIMIT $4{}) \
                     RETURNING {NOTIFICATION_COLUMNS}",
                    <$db as Dialect>::SKIP_LOCKED
                );
                let rows = sqlx::query(&sql)
                    .bind(received_before)
                    .bind(now)
                    .bind(until)
                    .bind(i64::from(limit.max(1)))
                    .fetch_all(e)
                    .await?;
                let mut claimed: Vec<NotificationRecord> = rows
                    .iter()
                    .map(StoreRow::notification)
                    .collect::<Result<_, _>>()?;
                claimed.sort_by_key(|n| n.id);
                Ok(claimed)
            }

            /// Closes one order (0 → -1) if still unpaid.
            pub(super) async fn close_order<'e, E: sqlx::Executor<'e, Database = $db>>(
                e: E,
                out_trade_no: &str,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE orders SET status = -1, updated_at = $2 \
                     WHERE out_trade_no = $1 AND status = 0",
                )
                .bind(out_trade_no)
                .bind(now_ms())
                .execute(e)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            /// Failed notifications whose order is still unpaid, oldest first.
            pub(super) async fn failed_unpaid<'e, E: sqlx::Executor<'e, Database = $db>>(
                e: E,
                since: Option<i64>,
                order_type: Option<&str>,
                limit: u32,
            ) -> Result<Vec<NotificationRecord>, StoreError> {
                let sql = format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications \
                     WHERE verdict = 'failed' AND ($1 IS NULL OR received_at >= $1) \
                       AND out_trade_no IN (SELECT out_trade_no FROM orders \
                                            WHERE status = 0 AND ($2 IS NULL OR type = $2)) \
                     ORDER BY id LIMIT $3"
                );
                let rows = sqlx::query(&sql)
                    .bind(since)
                    .bind(order_type)
                    .bind(i64::from(limit.clamp(1, 10_000)))
                    .fetch_all(e)
                    .await?;
                rows.iter().map(StoreRow::notification).collect()
            }
        }
    };
}

pub(crate) use claim_statements;
