//! `GET /api/orders/{out_trade_no}/refunds`: the refunds applied to an order.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::ApiError;
use crate::app::App;

/// The order's applied refunds, oldest first; 404 if there is no such order.
pub async fn list(State(app): State<App>, Path(out_trade_no): Path<String>) -> Response {
    match app.store.get_order(&out_trade_no).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return ApiError::not_found(format!("no order `{out_trade_no}`")).into_response()
        }
        Err(e) => return ApiError::internal(e).into_response(),
    }
    match app.store.list_refunds(&out_trade_no).await {
        Ok(refunds) => Json(serde_json::json!({ "refunds": refunds })).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
