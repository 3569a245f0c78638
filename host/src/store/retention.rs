//! Statements of `[retention]`, written once for both backends: cutting the body of a notification rejected
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

use super::statement::{Dialect, Statement};
use crate::time::Millis;

/// Deletes up to `limit` of the oldest notifications rejected without an order that
/// arrived before `received_before`, in one statement. On PostgreSQL rows another
/// process is deleting (or a replay is updating) are skipped, not waited for; deleting a
/// row twice is impossible and harmless.
///
/// The rows are picked in a `WITH` query, which PostgreSQL runs once. As
/// `WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` the planner may put the
/// subquery on the inner side of a nested loop and run it again for every row: each run
/// skips the rows this statement has just deleted and returns the next ones, so `LIMIT`
/// bounds nothing (seen: 7 rows deleted with a limit of 2).
pub(crate) fn prune_rejected(
    d: &Dialect,
    received_before: Millis,
    limit: u32,
) -> Statement<'static> {
    Statement::new(format!(
        "WITH doomed AS (SELECT id FROM notifications \
                         WHERE verdict = 'rejected' AND out_trade_no IS NULL \
                           AND received_at < $1 \
                         ORDER BY received_at LIMIT $2{}) \
         DELETE FROM notifications \
         WHERE id IN (SELECT id FROM doomed) \
           AND verdict = 'rejected' AND out_trade_no IS NULL",
        d.skip_locked
    ))
    .bind(received_before)
    .bind(i64::from(limit.max(1)))
}

/// Every notification stored `rejected` (through the `(verdict, id)` index), as `n`.
pub(crate) fn count_rejected() -> Statement<'static> {
    Statement::new("SELECT COUNT(*) AS n FROM notifications WHERE verdict = 'rejected'")
}
