//! Starting a refund (`POST /api/orders/{no}/refunds`, `orders refund`, the console's
//! Refund button).
//!
//! 1. The request is checked (amount, refund number, reason) and its amount reserved on
//!    the order under the order's row lock, in a transaction of its own: more than
//!    remains refundable, counting requests still in flight, is refused before anything
//!    is sent. The same refund number asked again is the same request (idempotent).
//! 2. The provider is called. WeChat accepts it and confirms later with its refund
//!    notification, which the existing refund path settles (status 2 / 3,
//!    `handle-refunded`). Alipay's verified answer is final and Alipay sends no refund
//!    notification by default: the answer is stored as a notification and settled through
//!    the same path now. Either way the `refunds` row's unique key makes it exactly once.
//! 3. A provider that refuses frees the amount (`failed`); an answer that never came
//!    leaves the request `requested` (it may have gone through): sending the same refund
//!    number again is how to find out, and is safe.

use serde::{Deserialize, Serialize};

use super::{notify_url, PayError};
use crate::app::App;
use crate::providers::api::{
    ProviderAnswer, OUT_REFUND_NO_HEADER, REFUND_AMOUNT_HEADER, REFUND_SOURCE,
};
use crate::providers::pay::{RefundStart, RefundStarted};
use crate::providers::{Notice, NoticeKind, ProviderKind, RefundAmount};
use crate::reconcile::order_ref;
use crate::store::payments::{refund_state, NewRefundRequest};
use crate::store::{status, NewNotification, RefundRequest, Reservation, Verdict};

/// The body of `POST /api/orders/{no}/refunds`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Fen to refund.
    pub amount: i64,
    /// The merchant's refund number; generated when absent (and returned).
    #[serde(default)]
    pub out_refund_no: Option<String>,
    /// Why, shown to the buyer where the provider shows it (at most 80 characters).
    #[serde(default)]
    pub reason: Option<String>,
}

/// A refund request and how sending it went.
#[derive(Debug, Clone, Serialize)]
pub struct Requested {
    /// The request as stored now (`state` says where it is).
    #[serde(flatten)]
    pub request: RefundRequest,
    /// Whether this call recorded it (false: the same refund number was asked before).
    pub created: bool,
    /// The stored answer that settled it (Alipay), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_id: Option<i64>,
}

/// Most characters of a refund reason (WeChat's limit; Alipay takes more).
const MAX_REASON_CHARS: usize = 80;

/// A refund number: 1–64 letters, digits or `_-|*@` (WeChat's rule; Alipay's is wider).
fn valid_out_refund_no(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b))
}

/// Starts a refund of `out_trade_no`.
pub async fn refund(
    app: &App,
    out_trade_no: &str,
    body: RefundBody,
) -> Result<Requested, PayError> {
    let invalid = |m: String| Err(PayError::Invalid(m));
    if body.amount <= 0 {
        return invalid(format!(
            "amount must be a positive amount in fen, got {}",
            body.amount
        ));
    }
    let out_refund_no = match body.out_refund_no {
        Some(n) if valid_out_refund_no(&n) => n,
        Some(n) => {
            return invalid(format!(
                "out_refund_no `{n}` must be 1-64 letters, digits or _-|*@"
            ))
        }
        None => format!("R{}", crate::names::generate_out_trade_no()),
    };
    if let Some(r) = &body.reason {
        if r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control) {
            return invalid(format!(
                "reason must be at most {MAX_REASON_CHARS} characters, without control characters"
            ));
        }
    }
    let Some(order) = app.store.get_order(out_trade_no).await? else {
        return Err(PayError::NotFound(format!("no order `{out_trade_no}`")));
    };
    let api = app
        .apis
        .get(&order.provider, &order.account)
        .map_err(|why| {
            PayError::Invalid(format!(
                "cannot start refunds with this order's account: {why}"
            ))
        })?;
    let Some(transaction_id) = order.transaction_id.clone() else {
        return Err(PayError::Conflict(format!(
            "order {out_trade_no} is {}: only a paid order can be refunded",
            status::name(order.status)
        )));
    };
    api.check_refund().map_err(|why| {
        PayError::Invalid(format!(
            "cannot start refunds with this order's account: {why}"
        ))
    })?;
    let new = NewRefundRequest {
        out_trade_no,
        out_refund_no: &out_refund_no,
        amount: body.amount,
        reason: body.reason.as_deref(),
    };
    let mut tx = app.store.begin().await?;
    let reservation = tx.reserve_refund(&new).await?;
    let (request, created) = match reservation {
        Reservation::New(r) => {
            tx.commit().await?;
            (r, true)
        }
        Reservation::Existing(r) => {
            // Nothing written; the order's row lock must not be held across the provider
            // call, or settling the answer (which locks the order) waits for it for ever.
            drop(tx);
            (r, false)
        }
        Reservation::Settled(r) => {
            return Ok(Requested {
                request: r,
                created: false,
                notification_id: None,
            })
        }
        Reservation::NoOrder => {
            return Err(PayError::NotFound(format!("no order `{out_trade_no}`")))
        }
        Reservation::NotRefundable(s) => {
            return Err(PayError::Conflict(format!(
                "order {out_trade_no} is {}: only a paid order can be refunded",
                status::name(s)
            )))
        }
        Reservation::TooMuch { remaining } => {
            return invalid(format!(
                "amount {} is more than order {out_trade_no} has left to refund ({remaining} fen, counting refunds in progress)",
                body.amount
            ))
        }
        Reservation::OtherAmount(r) => {
            return Err(PayError::Conflict(format!(
                "refund {out_refund_no} of order {out_trade_no} exists for {} fen, not {}",
                r.amount, body.amount
            )))
        }
    };
    let notify = notify_url(app, &order.provider, &order.account).ok();
    let start = RefundStart {
        order: order_ref(&order),
        transaction_id: &transaction_id,
        out_refund_no: &out_refund_no,
        amount: body.amount,
        total_fee: order.total_fee,
        reason: body.reason.as_deref(),
        notify_url: notify.as_deref(),
    };
    let payments = app.store.payments();
    let mut notification_id = None;
    match api.refund(app.apis.http(), &start).await {
        Ok(RefundStarted::Accepted { refund_id, state }) => {
            crate::metrics::refund_started(&order.provider, "accepted");
            tracing::info!(order = %out_trade_no, refund = %out_refund_no, %state, "refund accepted by the provider");
            payments
                .finish_refund_request(
                    out_trade_no,
                    &out_refund_no,
                    refund_state::ACCEPTED,
                    Some(&refund_id)
                        .filter(|s| !s.is_empty())
                        .map(String::as_str),
                    None,
                )
                .await?;
        }
        Ok(RefundStarted::Settled { notice, answer }) => {
            crate::metrics::refund_started(&order.provider, "settled");
            let notice = as_requested(*notice, body.amount);
            let (id, problem) = settle(
                app,
                api.kind(),
                &order.account,
                &out_refund_no,
                body.amount,
                notice,
                &answer,
            )
            .await;
            notification_id = id;
            payments
                .finish_refund_request(
                    out_trade_no,
                    &out_refund_no,
                    refund_state::ACCEPTED,
                    None,
                    problem.as_deref(),
                )
                .await?;
        }
        Err(source) => {
            // Refused by a verified answer: nothing moved. Anything else: unknown.
            let state = match source {
                crate::providers::api::ApiError::Declined { .. }
                | crate::providers::api::ApiError::Provider(_)
                | crate::providers::api::ApiError::Order(_) => refund_state::FAILED,
                _ => refund_state::REQUESTED,
            };
            crate::metrics::refund_started(
                &order.provider,
                if state == refund_state::FAILED {
                    "refused"
                } else {
                    "unknown"
                },
            );
            let error = source.to_string();
            payments
                .finish_refund_request(out_trade_no, &out_refund_no, state, None, Some(&error))
                .await?;
            tracing::warn!(order = %out_trade_no, refund = %out_refund_no, %state, error = %error, "refund not started");
            let context = if state == refund_state::FAILED {
                format!("refund {out_refund_no} of order {out_trade_no} refused")
            } else {
                format!(
                    "refund {out_refund_no} of order {out_trade_no}: outcome unknown, send the same out_refund_no again"
                )
            };
            return Err(PayError::Provider { context, source });
        }
    }
    let request = payments
        .refund_request(out_trade_no, &out_refund_no)
        .await?
        .unwrap_or(request);
    Ok(Requested {
        request,
        created,
        notification_id,
    })
}

/// A final refund answer settles exactly the fen its request asked for. Alipay's
/// `refund_fee` is the order's running total: with two refunds in flight, one answer's
/// total would also cover the other, apply both amounts under one refund number, and
/// leave the other request never settled (its amount reserved for ever). A verified
/// success of `out_request_no` means that request's `refund_amount` went back.
pub fn as_requested(mut notice: Notice, amount: i64) -> Notice {
    if let NoticeKind::Refunded(r) = &mut notice.kind {
        r.amount = RefundAmount::This(amount);
    }
    notice
}

/// Stores a final refund answer as a notification (with the refund number and amount it
/// answers) and settles it through the refund path; its id, and what to tell ops when it
/// did not settle.
async fn settle(
    app: &App,
    kind: ProviderKind,
    account: &str,
    out_refund_no: &str,
    amount: i64,
    notice: Notice,
    answer: &ProviderAnswer,
) -> (Option<i64>, Option<String>) {
    let mut headers = answer.stored_headers_as(REFUND_SOURCE);
    headers.push((OUT_REFUND_NO_HEADER.to_owned(), out_refund_no.to_owned()));
    headers.push((REFUND_AMOUNT_HEADER.to_owned(), amount.to_string()));
    let n = NewNotification {
        received_at: answer.received_at,
        provider: kind.as_str().to_owned(),
        account: Some(account.to_owned()),
        remote_addr: None,
        headers,
        body: answer.body.clone(),
        truncated: false,
    };
    let id = match app.store.insert_notification(&n).await {
        Ok(id) => id,
        Err(e) => {
            // The money has moved at the provider: the next request with this refund
            // number gets the same final answer and settles it.
            tracing::error!(error = %e, refund = %out_refund_no, "cannot store the provider's refund answer");
            return (
                None,
                Some(format!(
                    "refunded at the provider but not recorded here ({e}): send the same out_refund_no again"
                )),
            );
        }
    };
    let processed = app.pipeline.settle_verified(id, kind, notice).await;
    let problem = match processed.verdict {
        Verdict::Refunded | Verdict::Duplicate => None,
        v => Some(format!(
            "refunded at the provider; stored as notification {id}, verdict {}{}: fix and replay it",
            v.as_str(),
            processed.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        )),
    };
    (Some(id), problem)
}
