//! Starting money movements at the provider: what placing a payment and starting a
//! refund send and get back, shared by every provider's [`super::api::OrderApi`].
//!
//! Each provider reads a [`PayRequest`] its own way (WeChat's `jsapi`/`native`/`h5`/
//! `app`, Alipay's `page`/`wap`/`app`/`precreate`): [`PayFieldError`] names the field
//! that is wrong for it before anything is sent. What the client needs to pay comes back
//! as JSON ([`Placed::payment`]), shaped as each provider documents it for its SDK.

use serde::{Deserialize, Serialize};

use super::call::{OrderRef, ProviderAnswer};
use super::Notice;
use crate::time::Millis;

/// How the buyer will pay: the `pay` object of `POST /api/orders`, stored with the order
/// so that `orders pay-params` can place it again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    /// The provider's way to pay: WeChat `jsapi`, `native`, `h5`, `app` (v2 also takes
    /// `JSAPI`, `NATIVE`, `MWEB`, `APP`); Alipay `page`, `wap`, `app`, `precreate`.
    pub method: String,
    /// The buyer's openid (WeChat `jsapi`): under the account's appid, or for a partner
    /// account under the service provider's appid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openid: Option<String>,
    /// Partner accounts: the buyer's openid under the sub-merchant's own appid (`jsapi`
    /// paid in the sub-merchant's app); then `appId` of the client parameters is the
    /// sub-merchant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_openid: Option<String>,
    /// The buyer's IP address (WeChat `h5` / `MWEB`; sent for every WeChat method when
    /// given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// What the buyer sees on the cashier and the bill (WeChat `description`/`body`,
    /// Alipay `subject`); default: the order's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Alipay `page` / `wap`: where the buyer's browser returns after paying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_url: Option<String>,
}

/// A `pay` field that is wrong for the provider; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pay.{field}: {message}")]
pub struct PayFieldError {
    /// The field, as in the request (`method`, `openid`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl PayFieldError {
    /// A wrong `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> PayFieldError {
        PayFieldError {
            field,
            message: message.into(),
        }
    }
}

/// A payment to place at the provider.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// The order (and its sub-merchant, for a partner account).
    pub order: OrderRef<'a>,
    /// Amount in fen.
    pub total_fee: i64,
    /// How the buyer pays; checked with `check_pay` first.
    pub pay: &'a PayRequest,
    /// What the buyer sees (the request's, or the order's type).
    pub description: &'a str,
    /// Where the provider sends the payment notification.
    pub notify_url: &'a str,
    /// When the provider must stop taking the payment (unix ms), when configured.
    pub expire_at: Option<Millis>,
}

/// A payment the provider accepted.
#[derive(Debug, Clone)]
pub struct Placed {
    /// What the client needs to pay, as the provider documents it for its SDK (WeChat
    /// `wx.requestPayment` parameters, a `code_url`, a signed Alipay URL, …).
    pub payment: serde_json::Value,
}

/// A refund to start at the provider.
#[derive(Debug, Clone, Copy)]
pub struct RefundStart<'a> {
    /// The order (and its sub-merchant, for a partner account).
    pub order: OrderRef<'a>,
    /// The provider's transaction id of the payment.
    pub transaction_id: &'a str,
    /// The merchant's refund number (Alipay `out_request_no`).
    pub out_refund_no: &'a str,
    /// Fen to refund.
    pub amount: i64,
    /// The order's total in fen (WeChat wants it with every refund).
    pub total_fee: i64,
    /// Why, shown to the buyer where the provider shows it.
    pub reason: Option<&'a str>,
    /// Where the provider sends the refund notification (WeChat), when
    /// `server.public_base_url` is set; else the merchant platform's setting applies.
    pub notify_url: Option<&'a str>,
}

/// What the provider said to a refund it did not refuse.
#[derive(Debug, Clone)]
pub enum RefundStarted {
    /// Accepted; the provider confirms it later by its refund notification (WeChat).
    Accepted {
        /// The provider's refund id, when it gave one.
        refund_id: String,
        /// The provider's state of the refund (`PROCESSING`, `SUCCESS`, …).
        state: String,
    },
    /// The verified answer is final and reports the refund done (Alipay): it is settled
    /// now, as a refund notification would be.
    Settled {
        /// The refund, normalised as a refund notification's.
        notice: Box<Notice>,
        /// The answer it was read from, to store (and verify again on replay).
        answer: Box<ProviderAnswer>,
    },
}
