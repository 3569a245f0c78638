//! Creating orders: the checks that make an order payable later, and, with `pay`,
//! placing its payment at the provider in the same call (`payments::place`).

use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::payments::{self, PayError};
use crate::providers::pay::PayRequest;
use crate::providers::ProviderKind;
use crate::store::{status, NewOrder, Order, StoreError};

/// `POST /api/orders` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// Handler type; must be loaded.
    #[serde(rename = "type")]
    pub order_type: String,
    /// Amount in fen.
    pub total_fee: i64,
    /// Paying user.
    pub user_id: String,
    /// Provider name.
    pub provider: String,
    /// Account name; may be left out when the provider has one account.
    pub account: Option<String>,
    /// The sub-merchant (子商户号) the order is for: required for a WeChat Pay v3
    /// partner account, one of its `sub_merchants`; refused for any other account.
    #[serde(default)]
    pub sub_mchid: Option<String>,
    /// Merchant JSON object handed to the handler.
    #[serde(default)]
    pub custom: Option<serde_json::Value>,
    /// Order number; generated when absent.
    pub out_trade_no: Option<String>,
    /// Place the payment at the provider now, this way; the answer then carries
    /// `payment`, what the client needs to pay.
    #[serde(default)]
    pub pay: Option<PayRequest>,
}

/// A created order, and what its client needs to pay when it was placed.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// The order.
    #[serde(flatten)]
    pub order: Order,
    /// The client's payment parameters (`pay` given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<serde_json::Value>,
}

/// Why an order was not created.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// A field is wrong; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// The order number exists.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database error: {0}")]
    Store(StoreError),
    /// The order is stored but its payment was not placed (`pay`).
    #[error("{source}")]
    NotPlaced {
        /// The stored, unplaced order.
        order: Box<Order>,
        /// Why.
        source: PayError,
    },
}

/// Validates and inserts a new unpaid order; with `pay`, places its payment too. An
/// order number that exists is refused, except with `pay` for the same unpaid order
/// (same type, amount, user, provider, account, sub-merchant and custom): then it is placed
/// again, so a client may retry a placement that failed or whose answer it lost.
pub async fn create(app: &App, req: CreateOrder) -> Result<Created, OrderError> {
    let Some(pay) = req.pay.clone() else {
        let order = insert(app, req).await?;
        return Ok(Created {
            order,
            payment: None,
        });
    };
    let to_order_error = |e: PayError| match e {
        PayError::Invalid(m) => OrderError::Invalid(m),
        PayError::Conflict(m) | PayError::NotFound(m) => OrderError::Conflict(m),
        PayError::Store(e) => OrderError::Store(e),
        PayError::Provider { .. } => OrderError::Invalid(e.to_string()),
    };
    // Everything that needs no order is checked before one is stored.
    let account = ProviderKind::parse(&req.provider).and_then(|k| {
        app.providers
            .resolve_account(k, req.account.as_deref())
            .ok()
    });
    if let Some(account) = &account {
        payments::place::check(app, &req.provider, account, &pay).map_err(to_order_error)?;
    }
    let order = match insert(app, req.clone()).await {
        Ok(order) => order,
        Err(OrderError::Conflict(m)) => same_unpaid_order(app, &req)
            .await?
            .ok_or(OrderError::Conflict(m))?,
        Err(e) => return Err(e),
    };
    match payments::place::place(app, &order, &pay).await {
        Ok(payment) => Ok(Created {
            order,
            payment: Some(payment),
        }),
        Err(source @ PayError::Provider { .. }) => Err(OrderError::NotPlaced {
            order: Box::new(order),
            source,
        }),
        Err(e) => Err(to_order_error(e)),
    }
}

/// The stored order `req` names, if it is unpaid and the same as `req` asks for.
async fn same_unpaid_order(app: &App, req: &CreateOrder) -> Result<Option<Order>, OrderError> {
    let Some(no) = &req.out_trade_no else {
        return Ok(None);
    };
    let Some(o) = app.store.get_order(no).await.map_err(OrderError::Store)? else {
        return Ok(None);
    };
    let custom = match &req.custom {
        None | Some(serde_json::Value::Null) => serde_json::json!({}),
        Some(c) => c.clone(),
    };
    let same = o.status == status::UNPAID
        && o.custom == custom
        && o.order_type == req.order_type
        && o.total_fee == req.total_fee
        && o.user_id == req.user_id
        && o.provider == req.provider
        && req.account.as_ref().is_none_or(|a| *a == o.account)
        && o.sub_mchid == req.sub_mchid;
    Ok(same.then_some(o))
}

/// Validates and inserts a new unpaid order.
async fn insert(app: &App, req: CreateOrder) -> Result<Order, OrderError> {
    let invalid = |m: String| Err(OrderError::Invalid(m));
    if app.plugins.get(&req.order_type).is_none() {
        return invalid(app.plugins.why_missing(&req.order_type));
    }
    if req.total_fee <= 0 {
        return invalid(format!(
            "total_fee must be a positive amount in fen, got {}",
            req.total_fee
        ));
    }
    if req.user_id.is_empty() || req.user_id.len() > 128 {
        return invalid("user_id must be 1 to 128 characters".into());
    }
    let Some(kind) = ProviderKind::parse(&req.provider) else {
        return invalid(format!(
            "unknown provider `{}` (expected wechat-v2, wechat-v3, alipay, cloudpay or wechat-xpay)",
            req.provider
        ));
    };
    let account = app
        .providers
        .resolve_account(kind, req.account.as_deref())
        .map_err(OrderError::Invalid)?;
    let sub_mchid = app
        .providers
        .resolve_sub_mchid(kind, &account, req.sub_mchid.as_deref())
        .map_err(OrderError::Invalid)?;
    let custom = match req.custom {
        None | Some(serde_json::Value::Null) => serde_json::json!({}),
        Some(v @ serde_json::Value::Object(_)) => v,
        Some(_) => return invalid("custom must be a JSON object".into()),
    };
    let out_trade_no = match req.out_trade_no {
        Some(n) if crate::names::valid_out_trade_no(&n) => n,
        Some(n) => {
            return invalid(format!(
                "out_trade_no `{n}` must be 6-32 letters, digits or _-|*"
            ))
        }
        None => crate::names::generate_out_trade_no(),
    };
    app.store
        .create_order(&NewOrder {
            out_trade_no,
            order_type: req.order_type,
            provider: req.provider,
            account,
            sub_mchid,
            total_fee: req.total_fee,
            user_id: req.user_id,
            custom,
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => OrderError::Conflict(m),
            e => OrderError::Store(e),
        })
}
