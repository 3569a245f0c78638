//! `GET /api/orders/{out_trade_no}/refunds`: the refunds applied to an order.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::ApiError;
use crate::app::App;

/// The order's applied refunds, oldest first; 404 if there is no such order.
pub async fn list(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // A store failure is a 500 here even when the database is unavailable (503 elsewhere
    // in `/api`): kept as it was, since this step changes no behaviour.
    if app
        .store
        .get_order(&out_trade_no)
        .await
        .map_err(ApiError::internal)?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no order `{out_trade_no}`")));
    }
    let refunds = app
        .store
        .list_refunds(&out_trade_no)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "refunds": refunds })))
}
