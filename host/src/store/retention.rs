//! Statements of `[retention]`, shared by both backends like `store::common`'s (expanded
//! beside them by [`retention_statements!`]): cutting the body of a notification rejected
//! without verifying, deleting old ones, and the figures ops alert on.
//!
//! Which rows: verdict `rejected` and no order number. A notification gets its order
//! number only from a verified notice (the pipeline records `out_trade_no` from the
//! verified fields; a rejection at verification, an unknown provider, a refused content
//! type or an oversized body records none), so these are exactly the notifications that
//! never verified: what anyone on the internet can send without end, and what nothing
//! refers to (`orders.paid_notification_id` and `refunds.notification_id` name
//! notifications that paid or refunded; there are no foreign keys to fail on). Rejected
//! notifications that did verify (unknown order, amount or account mismatch: money may
//! have moved) keep their order number and are never cut or deleted. Neither is one that
//! verified once and is rejected by a later replay (say, after a key rotation): the
//! verdict statements only ever add an order number, never clear it.

/// The verdict statement of [`crate::store::Store::finish_notification`]: as
/// `sql::FINISH_NOTIFICATION`, and in the same `UPDATE`, when `$7` (the cut length) is
/// given, a body longer than `$7` bytes of a row left without an order is cut to that
/// and marked `truncated`. The caller gives `$7` for the `rejected` verdict only.
/// (`length` and `substr` count bytes of a BLOB on SQLite, of a `bytea` on PostgreSQL.)
pub(crate) const FINISH_NOTIFICATION_CUT: &str =
    "UPDATE notifications SET verdict = $2, reason = $3, \
     out_trade_no = COALESCE($4, out_trade_no), account = COALESCE($5, account), processed_at = $6, \
     body = CASE WHEN COALESCE($4, out_trade_no) IS NULL AND length(body) > $7 \
                 THEN substr(body, 1, $7) ELSE body END, \
     truncated = CASE WHEN COALESCE($4, out_trade_no) IS NULL AND length(body) > $7 \
                      THEN TRUE ELSE truncated END \
     WHERE id = $1";

/// The retention statements for backend `$db`, as module `retention_sql`.
macro_rules! retention_statements {
    ($db:ty) => {
        /// `[retention]` statements (see `store::retention`).
        mod retention_sql {
            use $crate::store::common::{storable, Dialect};
            use $crate::store::retention::FINISH_NOTIFICATION_CUT;
            use $crate::store::{now_ms, StoreError, Verdict};

            /// Records a verdict; the body of a notification rejected without an order
            /// is cut to `cut_at` bytes in the same statement.
            pub(super) async fn finish_notification<'e, E: sqlx::Executor<'e, Database = $db>>(
                e: E,
                id: i64,
                verdict: Verdict,
                reason: Option<&str>,
                out_trade_no: Option<&str>,
                account: Option<&str>,
                cut_at: i32,
            ) -> Result<(), StoreError> {
                let cut_at = (verdict == Verdict::Rejected).then_some(cut_at);
                sqlx::query(FINISH_NOTIFICATION_CUT)
                    .bind(id)
                    .bind(verdict.as_str())
                    .bind(reason.map(storable))
                    .bind(out_trade_no.map(storable))
                    .bind(account.map(storable))
                    .bind(now_ms())
                    .bind(cut_at)
                    .execute(e)
                    .await?;
                Ok(())
            }

            /// Deletes up to `limit` of the oldest notifications rejected without an
            /// order that arrived before `received_before`, in one statement. On
            /// PostgreSQL rows another process is deleting (or a replay is updating) are
            /// skipped, not waited for; deleting a row twice is impossible and harmless.
            ///
            /// The rows are picked in a `WITH` query, which PostgreSQL runs once. As
            /// `WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` the planner may
            /// put the subquery on the inner side of a nested loop and run it again for
            /// every row: each run skips the rows this statement has just deleted and
            /// returns the next ones, so `LIMIT` bounds nothing (seen: 7 rows deleted
            /// with a limit of 2).
            pub(super) async fn prune_rejected<'e, E: sqlx::Executor<'e, Database = $db>>(
                e: E,
                received_before: i64,
                limit: u32,
            ) -> Result<u64, StoreError> {
                let sql = format!(
                    "WITH doomed AS (SELECT id FROM notifications \
                                     WHERE verdict = 'rejected' AND out_trade_no IS NULL \
                                       AND received_at < $1 \
                                     ORDER BY received_at LIMIT $2{}) \
                     DELETE FROM notifications \
                     WHERE id IN (SELECT id FROM doomed) \
                       AND verdict = 'rejected' AND out_trade_no IS NULL",
                    <$db as Dialect>::SKIP_LOCKED
                );
                let done = sqlx::query(&sql)
                    .bind(received_before)
                    .bind(i64::from(limit.max(1)))
                    .execute(e)
                    .await?;
                Ok(done.rows_affected())
            }

            /// Every notification stored `rejected` (through the `(verdict, id)` index).
            pub(super) async fn count_rejected<'e, E: sqlx::Executor<'e, Database = $db>>(
                e: E,
            ) -> Result<i64, StoreError> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM notifications WHERE verdict = 'rejected'",
                )
                .fetch_one(e)
                .await?;
                Ok(n)
            }
        }
    };
}

pub(crate) use retention_statements;
