//! Closing one unpaid order on request (`POST /api/orders/{no}/close`, `orders close`):
//! at the provider first, when the account can call it, then here, for the reason
//! expiry does it in that order (`expiry.rs`): closed here first, a buyer still at the
//! cashier could pay in between. A provider that says the order is paid gets it
//! reconciled (queried and settled like a notification) instead.

use serde::Serialize;

use super::PayError;
use crate::app::App;
use crate::providers::api::CloseOutcome;
use crate::reconcile::{order_ref, Reconciler};
use crate::store::status;

/// How a close ended.
#[derive(Debug, Clone, Serialize)]
pub struct Closed {
    /// The order.
    pub out_trade_no: String,
    /// `closed`.
    pub status: &'static str,
    /// Whether the provider was told (false: CloudPay, or no API credentials).
    pub closed_at_provider: bool,
    /// Whether it was already closed here before this call.
    pub already_closed: bool,
    /// Why it was not closed at the provider, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Closes `out_trade_no` at its provider and here.
pub async fn close(app: &App, out_trade_no: &str) -> Result<Closed, PayError> {
    let Some(order) = app.store.get_order(out_trade_no).await? else {
        return Err(PayError::NotFound(format!("no order `{out_trade_no}`")));
    };
    let closed = |at_provider: bool, already: bool, note: Option<String>| Closed {
        out_trade_no: out_trade_no.to_owned(),
        status: "closed",
        closed_at_provider: at_provider,
        already_closed: already,
        note,
    };
    match order.status {
        status::CLOSED => return Ok(closed(false, true, None)),
        status::UNPAID => {}
        s => {
            return Err(PayError::Conflict(format!(
                "order {out_trade_no} is {}: a paid order cannot be closed (refund it instead)",
                status::name(s)
            )))
        }
    }
    let (at_provider, note) = match app.apis.get(&order.provider, &order.account) {
        Err(why) => (false, Some(format!("closed here only: {why}"))),
        Ok(api) => match api.close(app.apis.http(), order_ref(&order)).await {
            Ok(CloseOutcome::Closed) => (true, None),
            Ok(CloseOutcome::AlreadyPaid) => {
                let r = Reconciler::new(app).check(&order).await;
                return Err(PayError::Conflict(format!(
                    "the provider says order {out_trade_no} is paid, so it was not closed; \
                     reconciled: {}{}",
                    r.outcome.as_str(),
                    r.reason.map(|w| format!(" ({w})")).unwrap_or_default()
                )));
            }
            Err(source) => {
                return Err(PayError::Provider {
                    context: format!("closing order {out_trade_no} at the provider (still open)"),
                    source,
                })
            }
        },
    };
    if app.store.close_order(out_trade_no).await? {
        tracing::info!(order = %out_trade_no, at_provider, "order closed on request");
        return Ok(closed(at_provider, false, note));
    }
    // Paid (or closed) between the read and the close: say what it is now.
    match app.store.get_order(out_trade_no).await? {
        Some(o) if o.status == status::CLOSED => Ok(closed(at_provider, true, note)),
        Some(o) => Err(PayError::Conflict(format!(
            "order {out_trade_no} became {} while it was being closed",
            status::name(o.status)
        ))),
        None => Err(PayError::NotFound(format!("no order `{out_trade_no}`"))),
    }
}
