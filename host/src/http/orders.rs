//! `/api/orders`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;

use super::{read, ApiError};
use crate::app::App;
use crate::orders::{self, CreateOrder, Created};
use crate::payments::close::Closed;
use crate::providers::pay::PayRequest;
use crate::store::{status, Order, OrderCursor, OrderFilter};

/// `POST /api/orders` → 201 with the order (and `payment` when placed with `pay`); 502
/// with the provider's `code`, `message` and the stored `order` when the provider
/// refused it.
pub async fn create(
    State(app): State<App>,
    body: Result<Json<CreateOrder>, JsonRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let Json(req) = body?;
    let created = orders::create(&app, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Body of `POST /api/orders/{no}/pay`: the `pay` object, or nothing to place it as it
/// was last placed.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    /// How to pay; absent: as last placed.
    #[serde(default)]
    pay: Option<PayRequest>,
}

/// `POST /api/orders/{no}/pay` → `{out_trade_no, payment}`: places an existing unpaid
/// order (again), for clients whose payment parameters expired or were lost.
pub async fn pay(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
    body: Option<Json<PayBody>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pay = body.and_then(|Json(b)| b.pay);
    let payment = crate::payments::place::place_again(&app, &out_trade_no, pay).await?;
    Ok(Json(
        serde_json::json!({ "out_trade_no": out_trade_no, "payment": payment }),
    ))
}

/// `POST /api/orders/{no}/close`: closes an unpaid order at its provider, then here;
/// 409 for a paid one.
pub async fn close(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
) -> Result<Json<Closed>, ApiError> {
    Ok(Json(
        crate::payments::close::close(&app, &out_trade_no).await?,
    ))
}

/// `GET /api/orders/{out_trade_no}`.
pub async fn show(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
) -> Result<Json<Order>, ApiError> {
    read(&app, app.store.get_order(&out_trade_no))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no order `{out_trade_no}`")))
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

impl ListQuery {
    /// The store's filter; 400 for a status or cursor that does not parse.
    fn filter(self) -> Result<OrderFilter, ApiError> {
        let status = self
            .status
            .as_deref()
            .map(|s| {
                status::parse(s).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown status `{s}` (use -1/closed, 0/unpaid, 1/paid, 2/partially_refunded, 3/refunded)"
                    ))
                })
            })
            .transpose()?;
        let before = self
            .before
            .as_deref()
            .map(OrderCursor::parse)
            .transpose()
            .map_err(ApiError::BadRequest)?;
        Ok(OrderFilter {
            status,
            order_type: self.order_type,
            user_id: self.user,
            before,
            limit: self.limit.unwrap_or(50),
        })
    }
}

/// `GET /api/orders?status=&type=&user=&before=&limit=`: orders, newest first. The next
/// page is `before={created_at}:{out_trade_no}` of the last order returned; a page
/// shorter than `limit` is the last.
pub async fn list(
    State(app): State<App>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<Order>>, ApiError> {
    let Query(q) = query?;
    let filter = q.filter()?;
    Ok(Json(read(&app, app.store.list_orders(&filter)).await?))
}
