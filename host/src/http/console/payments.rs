//! The order page's money actions: Refund and Close, each a form that must be confirmed
//! (a ticked box, checked here too) and that passes the console's origin and CSRF
//! checks ([`CheckedPost`]). They call the same code as `POST /api/orders/{no}/refunds`
//! and `/close`, and come back to the order page with what happened.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Redirect;
use maud::{html, Markup};

use super::format::{text_opt, time, yuan};
use super::session::CheckedPost;
use super::widgets::csrf_field;
use super::{PageError, Session};
use crate::app::App;
use crate::payments::refund::RefundBody;
use crate::payments::PayError;
use crate::store::{status, Order, RefundRequest};

/// The form value of the confirmation box.
const CONFIRMED: &str = "yes";

/// The refund requests of the order, and the Refund / Close forms its status allows.
pub fn actions(o: &Order, requests: &[RefundRequest], session: &Session) -> Markup {
    let refundable = o.total_fee - o.refund_fee;
    html! {
        h2 { "Refunds started here" }
        @if requests.is_empty() { p.muted { "None." } }
        @else {
            table #refund-requests {
                thead { tr { th { "Refund no." } th.num { "Amount" } th { "State" } th { "Provider id" } th { "Note" } th { "Requested" } } }
                tbody {
                    @for r in requests {
                        tr {
                            td { (r.out_refund_no) }
                            td.num { (yuan(r.amount)) }
                            td.status { span class={"badge refund-" (r.state)} { (r.state) } }
                            td { (text_opt(r.refund_id.as_deref())) }
                            td.error { (text_opt(r.error.as_deref())) }
                            td { (time(r.created_at)) }
                        }
                    }
                }
            }
        }
        @if matches!(o.status, status::PAID | status::PARTIALLY_REFUNDED) && refundable > 0 {
            details #refund {
                summary { "Refund…" }
                form method="post" action={"/console/orders/" (o.out_trade_no) "/refund"} {
                    (csrf_field(session))
                    label { "Amount (fen) " input type="number" name="amount" min="1" max=(refundable) value=(refundable) required; }
                    label { " Reason " input type="text" name="reason" maxlength="80"; }
                    label { " " input type="checkbox" name="confirm" value=(CONFIRMED) required; " I confirm this refund: the money goes back to the buyer" }
                    " " button type="submit" class="danger" { "Refund" }
                }
            }
        }
        @if o.status == status::UNPAID {
            details #close {
                summary { "Close…" }
                form method="post" action={"/console/orders/" (o.out_trade_no) "/close"} {
                    (csrf_field(session))
                    label { input type="checkbox" name="confirm" value=(CONFIRMED) required; " I confirm: the buyer can no longer pay this order" }
                    " " button type="submit" class="danger" { "Close order" }
                }
            }
        }
    }
}

/// What an action's failure shows: the service's status and message.
fn failed(e: PayError) -> PageError {
    let status = match e {
        PayError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        PayError::NotFound(_) => StatusCode::NOT_FOUND,
        PayError::Conflict(_) => StatusCode::CONFLICT,
        PayError::Provider { .. } => StatusCode::BAD_GATEWAY,
        PayError::Store(e) => return PageError::Store(e),
    };
    PageError::Status(status, format!("Nothing was done: {e}"))
}

fn confirmed(fields: &std::collections::BTreeMap<String, String>) -> Result<(), PageError> {
    if fields.get("confirm").map(String::as_str) == Some(CONFIRMED) {
        Ok(())
    } else {
        Err(PageError::Status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not confirmed: tick the box to confirm. Nothing was done.".into(),
        ))
    }
}

/// `POST /console/orders/{no}/refund`: starts a refund, then shows the order.
pub async fn refund(
    State(app): State<App>,
    Path(no): Path<String>,
    CheckedPost(_, fields): CheckedPost,
) -> Result<Redirect, PageError> {
    confirmed(&fields)?;
    let amount = fields
        .get("amount")
        .and_then(|a| a.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            PageError::Status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "The amount must be a whole number of fen. Nothing was done.".into(),
            )
        })?;
    let reason = fields
        .get("reason")
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let body = RefundBody {
        amount,
        out_refund_no: None,
        reason,
    };
    let r = crate::payments::refund::refund(&app, &no, body)
        .await
        .map_err(failed)?;
    tracing::info!(order = %no, refund = %r.request.out_refund_no, amount, "refund started from the console");
    Ok(Redirect::to(&format!(
        "/console/orders/{no}?refund={}",
        r.request.out_refund_no
    )))
}

/// `POST /console/orders/{no}/close`: closes the order at its provider and here, then
/// shows it.
pub async fn close(
    State(app): State<App>,
    Path(no): Path<String>,
    CheckedPost(_, fields): CheckedPost,
) -> Result<Redirect, PageError> {
    confirmed(&fields)?;
    let c = crate::payments::close::close(&app, &no)
        .await
        .map_err(failed)?;
    tracing::info!(order = %no, at_provider = c.closed_at_provider, "order closed from the console");
    Ok(Redirect::to(&format!("/console/orders/{no}?closed=1")))
}
