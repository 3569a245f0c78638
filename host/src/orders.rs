//! Creating orders: the checks that make an order payable later.

use serde::Deserialize;

use crate::app::App;
use crate::providers::ProviderKind;
use crate::store::{NewOrder, Order, StoreError};

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
}

/// A fresh order number: time-ordered and unguessable enough to be unique.
fn generate_out_trade_no() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        hex::encode(rand::random::<[u8; 9]>())
    )
}

/// Validates and inserts a new unpaid order.
pub async fn create(app: &App, req: CreateOrder) -> Result<Order, OrderError> {
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
            "unknown provider `{}` (expected wechat-v2, wechat-v3, alipay or cloudpay)",
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
        None => generate_out_trade_no(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_numbers_are_valid_and_distinct() {
        let a = generate_out_trade_no();
        let b = generate_out_trade_no();
        assert!(crate::names::valid_out_trade_no(&a), "{a}");
        assert_ne!(a, b);
        assert!(!crate::names::valid_out_trade_no("abc"));
        assert!(!crate::names::valid_out_trade_no("has space 123"));
    }
}
