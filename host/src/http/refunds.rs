//! `/api/orders/{out_trade_no}/refunds`: starting a refund, and the refunds of an order.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{read, ApiError};
use crate::app::App;
use crate::payments::refund::{RefundBody, Requested};

/// `POST`: starts a refund → 201 when recorded now, 200 when the same `out_refund_no`
/// was asked before (its state as it is now); 422 for more than remains refundable, 409
/// for an order that is not paid, 502 when the provider refused or did not answer.
pub async fn create(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
    body: Result<Json<RefundBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Requested>), ApiError> {
    let Json(body) = body?;
    let r = crate::payments::refund::refund(&app, &out_trade_no, body).await?;
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(r)))
}

/// `GET`: `refunds`, the refunds applied to the order, and `requests`, the refunds
/// started here with their state (`requested`, `accepted`, `failed`, `settled`), oldest
/// first; 404 if there is no such order.
pub async fn list(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Bounded like every `/api` read: a database that is down is a 503, not a hang.
    if read(&app, app.store.get_order(&out_trade_no))
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no order `{out_trade_no}`")));
    }
    let refunds = read(&app, app.store.list_refunds(&out_trade_no)).await?;
    let requests = read(&app, app.store.payments().refund_requests(&out_trade_no)).await?;
    Ok(Json(json!({ "refunds": refunds, "requests": requests })))
}
