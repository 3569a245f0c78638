//! `/api/orders`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::ApiError;
use crate::app::App;
use crate::orders::{self, CreateOrder, OrderError};

/// `POST /api/orders` → 201 with the order.
pub async fn create(
    State(app): State<App>,
    body: Result<Json<CreateOrder>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    match orders::create(&app, req).await {
        Ok(order) => (StatusCode::CREATED, Json(order)).into_response(),
        Err(OrderError::Invalid(m)) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m).into_response()
        }
        Err(OrderError::Conflict(m)) => ApiError::new(StatusCode::CONFLICT, m).into_response(),
        Err(OrderError::Store(e)) => ApiError::internal(e).into_response(),
    }
}

/// `GET /api/orders/{out_trade_no}`.
pub async fn show(State(app): State<App>, Path(out_trade_no): Path<String>) -> Response {
    match app.store.get_order(&out_trade_no).await {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => ApiError::not_found(format!("no order `{out_trade_no}`")).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
