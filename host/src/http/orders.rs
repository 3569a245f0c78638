//! `/api/orders`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{read, ApiError};
use crate::app::App;
use crate::orders::{self, CreateOrder, OrderError};
use crate::store::{status, OrderCursor, OrderFilter};

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
        Err(OrderError::Store(e)) => ApiError::store(e).into_response(),
    }
}

/// `GET /api/orders/{out_trade_no}`.
pub async fn show(State(app): State<App>, Path(out_trade_no): Path<String>) -> Response {
    match read(&app, app.store.get_order(&out_trade_no)).await {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => ApiError::not_found(format!("no order `{out_trade_no}`")).into_response(),
        Err(e) => ApiError::store(e).into_response(),
    }
}

/// Query of `GET /api/orders`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// A status code (`1`) or name (`paid`).
    status: Option<String>,
    /// A handler type.
    #[serde(rename = "type")]
    order_type: Option<String>,
    /// A user id.
    user: Option<String>,
    /// `{created_at}:{out_trade_no}` of the last order of the previous page.
    before: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
}

/// `GET /api/orders?status=&type=&user=&before=&limit=`: orders, newest first. The next
/// page is `before={created_at}:{out_trade_no}` of the last order returned; a page
/// shorter than `limit` is the last.
pub async fn list(
    State(app): State<App>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let status = match q.status.as_deref().map(|s| (s, status::parse(s))) {
        None => None,
        Some((_, Some(code))) => Some(code),
        Some((s, None)) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown status `{s}` (use -1/closed, 0/unpaid, 1/paid, 2/partially_refunded, 3/refunded)"
                ),
            )
            .into_response()
        }
    };
    let before = match q.before.as_deref().map(OrderCursor::parse).transpose() {
        Ok(b) => b,
        Err(m) => return ApiError::new(StatusCode::BAD_REQUEST, m).into_response(),
    };
    let filter = OrderFilter {
        status,
        order_type: q.order_type,
        user_id: q.user,
        before,
        limit: q.limit.unwrap_or(50),
    };
    match read(&app, app.store.list_orders(&filter)).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => ApiError::store(e).into_response(),
    }
}
