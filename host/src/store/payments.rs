//! The payment loop in the database (migration 0013): `order_placements` (how an order
//! was placed at its provider, and how the last attempt ended) and `refund_requests`
//! (refunds started here, until the provider settles them into `refunds`).
//!
//! A refund's amount is reserved when it is requested, under the order's row lock
//! ([`Tx::reserve_refund`](super::Tx::reserve_refund)): what remains refundable is the
//! order's total less what was refunded and less what other requests still wait for, so
//! two requests at once can never together ask for more than was paid. The statements
//! are the same on both backends.

use async_trait::async_trait;
use serde::Serialize;

use super::statement::{required, storable, Columns, On, Sql, Statement};
use super::StoreError;
use crate::time::{now_ms, Millis};

/// The states of a refund request, as stored.
pub mod refund_state {
    /// Recorded; being sent, or sent with no answer known (it may have gone through).
    pub const REQUESTED: &str = "requested";
    /// The provider took it and will confirm it by its refund notification.
    pub const ACCEPTED: &str = "accepted";
    /// The provider refused it: nothing moved, its amount is free again.
    pub const FAILED: &str = "failed";
    /// Shown, never stored: a `refunds` row with its numbers exists.
    pub const SETTLED: &str = "settled";
}

/// How an order was placed at its provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    /// The order.
    pub out_trade_no: String,
    /// The `pay` request (JSON).
    pub pay: serde_json::Value,
    /// When the provider last accepted it.
    pub placed_at: Option<Millis>,
    /// Why the last attempt failed; `None` after a success.
    pub error: Option<String>,
    /// Attempts so far.
    pub attempts: i64,
    /// When the last attempt ended.
    pub updated_at: Millis,
}

/// A refund requested here.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefundRequest {
    /// Id.
    pub id: i64,
    /// The order.
    pub out_trade_no: String,
    /// The merchant's refund number.
    pub out_refund_no: String,
    /// Fen to refund.
    pub amount: i64,
    /// Why, as given.
    pub reason: Option<String>,
    /// [`refund_state`]: `requested`, `accepted`, `failed`, or `settled` once its refund
    /// is applied to the order.
    pub state: String,
    /// The provider's refund id, once it gave one.
    pub refund_id: Option<String>,
    /// Why it failed, or the last error sending it.
    pub error: Option<String>,
    /// When it was requested.
    pub created_at: Millis,
    /// When it last changed.
    pub updated_at: Millis,
}

/// A refund to reserve on an order.
#[derive(Debug, Clone, Copy)]
pub struct NewRefundRequest<'a> {
    /// The order.
    pub out_trade_no: &'a str,
    /// The merchant's refund number.
    pub out_refund_no: &'a str,
    /// Fen to refund (> 0).
    pub amount: i64,
    /// Why.
    pub reason: Option<&'a str>,
}

/// What reserving a refund decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// Reserved now (a new request, or a failed one with the same numbers taken up
    /// again): send it.
    New(RefundRequest),
    /// A request with these numbers and this amount exists and is not settled: send it
    /// again (the providers take a refund number once).
    Existing(RefundRequest),
    /// Its refund is already applied to the order: nothing to send.
    Settled(RefundRequest),
    /// No such order.
    NoOrder,
    /// The order is not paid (or is fully refunded): its status.
    NotRefundable(i32),
    /// The amount is more than remains refundable (`remaining` fen).
    TooMuch {
        /// What remains: the total, less refunded, less other requests in flight.
        remaining: i64,
    },
    /// The refund number exists on the order with another amount.
    OtherAmount(RefundRequest),
}

const PLACEMENT_COLUMNS: &str = "out_trade_no, pay, placed_at, error, attempts, updated_at";

const REQUEST_COLUMNS: &str = "r.id, r.out_trade_no, r.out_refund_no, r.amount, r.reason, \
     r.state, r.refund_id, r.error, r.created_at, r.updated_at, \
     (SELECT COUNT(*) FROM refunds f WHERE f.out_trade_no = r.out_trade_no \
        AND f.out_refund_no = r.out_refund_no) AS settled";

fn placement_row(r: &dyn Columns) -> Result<Placement, StoreError> {
    let pay = required(r.text("pay")?, "pay")?;
    Ok(Placement {
        out_trade_no: required(r.text("out_trade_no")?, "out_trade_no")?,
        pay: serde_json::from_str(&pay)
            .map_err(|e| StoreError::Invalid(format!("stored pay is not JSON: {e}")))?,
        placed_at: r.int8("placed_at")?,
        error: r.text("error")?,
        attempts: required(r.int8("attempts")?, "attempts")?,
        updated_at: required(r.int8("updated_at")?, "updated_at")?,
    })
}

pub(crate) fn request_row(r: &dyn Columns) -> Result<RefundRequest, StoreError> {
    let settled = r.int8("settled")?.unwrap_or(0) > 0;
    let stored: String = required(r.text("state")?, "state")?;
    Ok(RefundRequest {
        id: required(r.int8("id")?, "id")?,
        out_trade_no: required(r.text("out_trade_no")?, "out_trade_no")?,
        out_refund_no: required(r.text("out_refund_no")?, "out_refund_no")?,
        amount: required(r.int8("amount")?, "amount")?,
        reason: r.text("reason")?,
        state: if settled {
            refund_state::SETTLED.to_owned()
        } else {
            stored
        },
        refund_id: r.text("refund_id")?,
        error: r.text("error")?,
        created_at: required(r.int8("created_at")?, "created_at")?,
        updated_at: required(r.int8("updated_at")?, "updated_at")?,
    })
}

/// One request of an order by its refund number.
pub(crate) fn select_request<'a>(out_trade_no: &'a str, out_refund_no: &'a str) -> Statement<'a> {
    Statement::new(format!(
        "SELECT {REQUEST_COLUMNS} FROM refund_requests r \
         WHERE r.out_trade_no = $1 AND r.out_refund_no = $2"
    ))
    .bind(storable(out_trade_no))
    .bind(storable(out_refund_no))
}

fn list_requests(out_trade_no: &str) -> Statement<'_> {
    Statement::new(format!(
        "SELECT {REQUEST_COLUMNS} FROM refund_requests r WHERE r.out_trade_no = $1 ORDER BY r.id"
    ))
    .bind(storable(out_trade_no))
}

/// Fen that requests of the order other than `out_refund_no` still wait for: requested
/// or accepted, and not applied yet.
pub(crate) fn in_flight<'a>(out_trade_no: &'a str, out_refund_no: &'a str) -> Statement<'a> {
    Statement::new(
        "SELECT CAST(COALESCE(SUM(r.amount), 0) AS BIGINT) AS total FROM refund_requests r \
         WHERE r.out_trade_no = $1 AND r.out_refund_no <> $2 \
           AND r.state IN ('requested', 'accepted') \
           AND NOT EXISTS (SELECT 1 FROM refunds f WHERE f.out_trade_no = r.out_trade_no \
                           AND f.out_refund_no = r.out_refund_no)",
    )
    .bind(storable(out_trade_no))
    .bind(storable(out_refund_no))
}

/// Records a new request as `requested`, or takes a failed one with the same numbers
/// up again.
pub(crate) fn upsert_request<'a>(r: &NewRefundRequest<'a>) -> Statement<'a> {
    let now = now_ms();
    Statement::new(
        "INSERT INTO refund_requests (out_trade_no, out_refund_no, amount, reason, state, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, 'requested', $5, $5) \
         ON CONFLICT (out_trade_no, out_refund_no) DO UPDATE SET state = 'requested', \
         error = NULL, updated_at = excluded.updated_at \
         WHERE refund_requests.state = 'failed' AND refund_requests.amount = excluded.amount",
    )
    .bind(storable(r.out_trade_no))
    .bind(storable(r.out_refund_no))
    .bind(r.amount)
    .bind(r.reason.map(storable))
    .bind(now)
}

fn finish_request<'a>(
    out_trade_no: &'a str,
    out_refund_no: &'a str,
    state: &'a str,
    refund_id: Option<&'a str>,
    error: Option<&'a str>,
) -> Statement<'a> {
    Statement::new(
        "UPDATE refund_requests SET state = $3, refund_id = COALESCE($4, refund_id), \
         error = $5, updated_at = $6 WHERE out_trade_no = $1 AND out_refund_no = $2",
    )
    .bind(storable(out_trade_no))
    .bind(storable(out_refund_no))
    .bind(state)
    .bind(refund_id.map(storable))
    .bind(error.map(storable))
    .bind(now_ms())
}

fn upsert_placement<'a>(
    out_trade_no: &'a str,
    pay: &serde_json::Value,
    placed: bool,
    error: Option<&'a str>,
) -> Statement<'a> {
    let now = now_ms();
    Statement::new(
        "INSERT INTO order_placements (out_trade_no, pay, placed_at, error, attempts, updated_at) \
         VALUES ($1, $2, $3, $4, 1, $5) \
         ON CONFLICT (out_trade_no) DO UPDATE SET pay = excluded.pay, \
         placed_at = COALESCE(excluded.placed_at, order_placements.placed_at), \
         error = excluded.error, attempts = order_placements.attempts + 1, \
         updated_at = excluded.updated_at",
    )
    .bind(storable(out_trade_no))
    .bind(pay.to_string())
    .bind(placed.then_some(now))
    .bind(error.map(storable))
    .bind(now)
}

/// Placements and refund requests (every backend's, reached through
/// [`Store::payments`](super::Store::payments)).
#[async_trait]
pub trait PaymentStore: Send + Sync {
    /// Records a placement attempt of `out_trade_no` with `pay`: accepted (`error`
    /// `None`) or failed with `error`.
    async fn record_placement(
        &self,
        out_trade_no: &str,
        pay: &serde_json::Value,
        error: Option<&str>,
    ) -> Result<(), StoreError>;
    /// How the order was placed, if it ever was.
    async fn placement(&self, out_trade_no: &str) -> Result<Option<Placement>, StoreError>;
    /// The order's refund requests, oldest first.
    async fn refund_requests(&self, out_trade_no: &str) -> Result<Vec<RefundRequest>, StoreError>;
    /// One refund request.
    async fn refund_request(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRequest>, StoreError>;
    /// Records how sending a request ended: `accepted` with the provider's refund id,
    /// `failed` with why, or still `requested` with the last error (outcome unknown).
    async fn finish_refund_request(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
        state: &str,
        refund_id: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl<S: Sql> PaymentStore for S {
    async fn record_placement(
        &self,
        out_trade_no: &str,
        pay: &serde_json::Value,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let st = upsert_placement(out_trade_no, pay, error.is_none(), error);
        self.execute(On::Write, &st).await?;
        Ok(())
    }

    async fn placement(&self, out_trade_no: &str) -> Result<Option<Placement>, StoreError> {
        let st = Statement::new(format!(
            "SELECT {PLACEMENT_COLUMNS} FROM order_placements WHERE out_trade_no = $1"
        ))
        .bind(storable(out_trade_no));
        Ok(self.fetch(On::Read, &st, placement_row).await?.pop())
    }

    async fn refund_requests(&self, out_trade_no: &str) -> Result<Vec<RefundRequest>, StoreError> {
        self.fetch(On::Read, &list_requests(out_trade_no), request_row)
            .await
    }

    async fn refund_request(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRequest>, StoreError> {
        let st = select_request(out_trade_no, out_refund_no);
        Ok(self.fetch(On::Read, &st, request_row).await?.pop())
    }

    async fn finish_refund_request(
        &self,
        out_trade_no: &str,
        out_refund_no: &str,
        state: &str,
        refund_id: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let st = finish_request(out_trade_no, out_refund_no, state, refund_id, error);
        self.execute(On::Write, &st).await?;
        Ok(())
    }
}
