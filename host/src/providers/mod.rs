//! Payment providers: each parses and verifies its own notification format and answers
//! in its own convention. Everything after verification is provider-agnostic: a
//! provider turns raw bytes into a [`Notice`] or a [`Rejection`].
//!
//! ## Layout
//!
//! - this module: the [`Provider`] trait, what goes in and out of it ([`Inbound`],
//!   [`Notice`], [`Rejection`], [`Answer`]) and the content-type rule every provider
//!   states ([`ContentTypes`]);
//! - [`registry`]: builds, in one pass over `[[accounts]]`, the verifiers ([`Providers`])
//!   and the order-API clients ([`api::Apis`]);
//! - [`call`]: what every provider call names and gets back ([`call::OrderRef`],
//!   [`call::ProviderAnswer`]) and the marks of a stored answer;
//! - [`api`]: the other direction, calling a provider (order query and close): the
//!   [`api::OrderApi`] trait, the answer as received, the HTTP helpers; [`pay`], what
//!   placing a payment and starting a refund send and get back;
//! - one module per provider, each holding both halves (notification verify, and its
//!   `api` client) over one account type, so parsing and signing are written once:
//!   [`wechat_v2`], [`wechat_v3`], [`alipay`], [`cloudpay`] and [`wechat_xpay`] (no API);
//! - `common` and `json`: the checks and JSON readers several providers share.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

pub use crate::config::ProviderKind;

pub mod alipay;
pub mod api;
pub mod call;
pub mod cloudpay;
pub mod common;
mod json;
pub mod pay;
pub mod registry;
pub mod wechat_v2;
pub mod wechat_v3;
pub mod wechat_xpay;

// `ct_eq` is also the host's constant-time compare for admin tokens (`http::auth`).

/// A notification as it arrived, before any check.
#[derive(Debug, Clone)]
pub struct Inbound<'a> {
    /// The account named in the URL, if any.
    pub account: Option<&'a str>,
    /// Request headers, names lower-case.
    pub headers: &'a [(String, String)],
    /// The raw body.
    pub body: &'a [u8],
    /// When it was received (unix ms): timestamp windows are checked against this, so a
    /// replay of an old notification verifies as it did on arrival.
    pub received_at: i64,
}

/// The pseudo-header carrying a notification's query string (without `?`), stored with
/// its headers so a replay sees it too; no HTTP header name can hold a `:`, so no client
/// header can pose as it. WeChat's message push signs with its query string.
pub const QUERY_HEADER: &str = ":query";

impl Inbound<'_> {
    /// The query string of the request, if it had one.
    pub fn query(&self) -> Option<&str> {
        self.header(QUERY_HEADER)
    }

    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A verified notification, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The account whose key verified it.
    pub account: String,
    /// The merchant order number it names.
    pub out_trade_no: String,
    /// What it reports.
    pub kind: NoticeKind,
    /// Every verified field as received, for the handler and `original_data`.
    pub fields: BTreeMap<String, String>,
    /// The sub-merchant it is for, when a service provider's account verified it (WeChat
    /// Pay v3 partner mode); `None` for a merchant's own. The order must name the same.
    pub sub_mchid: Option<String>,
}

/// What a verified notification reports.
#[derive(Debug, Clone, PartialEq)]
pub enum NoticeKind {
    /// The order was paid.
    Paid(Payment),
    /// A non-payment state (closed, failed, waiting): recorded and acknowledged, changes nothing.
    NotPaid {
        /// The provider's state, e.g. `FAIL`, `TRADE_CLOSED`.
        state: String,
    },
    /// Part or all of the order's payment was refunded.
    Refunded(Refund),
}

/// The facts of a successful refund, as the provider states them.
#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    /// The merchant's refund number (`out_refund_no`; Alipay `out_biz_no`): with the
    /// order number, what makes a refund unique.
    pub out_refund_no: String,
    /// The provider's refund id; empty when the provider gives none (Alipay).
    pub refund_id: String,
    /// The provider's transaction id of the refunded payment.
    pub transaction_id: String,
    /// How much was refunded.
    pub amount: RefundAmount,
    /// The order total the provider states, in fen, when it states one.
    pub total_fee: Option<i64>,
    /// When the refund succeeded (unix ms), if the provider says.
    pub refunded_at: Option<i64>,
}

/// How a provider states a refund's amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundAmount {
    /// Fen refunded by this refund (WeChat Pay `refund_fee` / `amount.refund`).
    This(i64),
    /// Fen refunded on the order so far, this refund included (Alipay `refund_fee`).
    Cumulative(i64),
}

/// The facts of a payment, as the provider states them.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    /// The provider's transaction id.
    pub transaction_id: String,
    /// Amount paid for the order, in fen.
    pub amount: i64,
    /// When it was paid (unix ms), if the provider says.
    pub paid_at: Option<i64>,
}

/// Why a notification was not accepted. The message is stored and logged, and the
/// provider gets its failure answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The body could not be parsed.
    #[error("malformed notification: {0}")]
    Malformed(String),
    /// The signature did not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// No configured account matches.
    #[error("unknown account: {0}")]
    UnknownAccount(String),
    /// The notification belongs to another merchant or app.
    #[error("account mismatch: {0}")]
    AccountMismatch(String),
    /// A timestamp outside the allowed window.
    #[error("stale timestamp: {0}")]
    Stale(String),
    /// Something required is missing or unsupported.
    #[error("unsupported notification: {0}")]
    Unsupported(String),
    /// The signed `k=v&…` string would split into other fields than the ones received, so
    /// the signature does not say which fields were signed.
    #[error("ambiguous signed string: {0}")]
    Ambiguous(String),
}

/// An HTTP answer in a provider's own convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, when there is a body.
    pub content_type: Option<&'static str>,
    /// The exact body.
    pub body: Vec<u8>,
}

/// A provider: verifies its notifications and knows its answers.
pub trait Provider: Send + Sync {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;
    /// The configured account names.
    fn accounts(&self) -> Vec<&str>;
    /// The `Content-Type` this provider's notifications carry.
    fn content_types(&self) -> ContentTypes;
    /// Checks a request's `Content-Type` header values (every one, raw) before anything
    /// is parsed; a refusal is stored as a rejection and answered 415.
    fn check_content_type(&self, values: &[&[u8]]) -> Result<(), ContentTypeRefusal> {
        self.content_types().check(self.kind(), values)
    }
    /// The sub-merchants an account receives payments for (WeChat Pay v3 partner mode),
    /// one of which each of its orders must name; `None` for a merchant's own account.
    fn sub_merchants(&self, _account: &str) -> Option<Vec<&str>> {
        None
    }
    /// Before [`Provider::verify`]: fetches a key the notification names that this host
    /// may not hold yet (WeChat Pay v3 platform certificates that rotate), within a
    /// bounded time. Nothing by default.
    fn fetch_missing_keys<'a>(&'a self, _inbound: &'a Inbound<'_>) -> KeyFetch<'a> {
        Box::pin(std::future::ready(()))
    }
    /// The answer to a `GET` on the notification URL (WeChat message push's URL check),
    /// given the raw query string; `None` when the provider has no such check. Nothing
    /// is stored.
    fn url_check(&self, _account: Option<&str>, _raw_query: &str) -> Option<Answer> {
        None
    }
    /// Parses and verifies a notification on its raw bytes.
    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection>;
    /// The answer that tells the provider to stop retrying.
    fn success(&self) -> Answer;
    /// The answer that tells the provider the notification was not accepted.
    fn failure(&self, reason: &str) -> Answer;
}

/// What [`Provider::fetch_missing_keys`] returns: done when the keys are as good as
/// they will get for this notification.
pub type KeyFetch<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The media types a provider sends its notifications with. Checked on the type alone
/// (before any `;` parameter, case-insensitive); several `Content-Type` headers are
/// refused, since which one a proxy would honour is anyone's guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentTypes {
    /// The accepted media types, lower case, without parameters.
    pub media_types: &'static [&'static str],
    /// Whether a notification without the header is accepted too.
    pub may_be_absent: bool,
}

impl ContentTypes {
    /// Whether a notification may carry these `Content-Type` values.
    pub fn allows(&self, values: &[&[u8]]) -> bool {
        match values {
            [] => self.may_be_absent,
            [one] => match std::str::from_utf8(one) {
                Ok(v) => {
                    let essence = v
                        .split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase();
                    self.media_types.contains(&essence.as_str())
                }
                Err(_) => false,
            },
            _ => false,
        }
    }

    /// [`ContentTypes::allows`], or the refusal whose reason names what came and what
    /// `kind` sends.
    pub fn check(&self, kind: ProviderKind, values: &[&[u8]]) -> Result<(), ContentTypeRefusal> {
        if self.allows(values) {
            return Ok(());
        }
        let shown: Vec<String> = values
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let expected = self.media_types.join(" or ");
        let reason = match shown.as_slice() {
            [] => format!("unsupported content type: none given; {kind} sends {expected}"),
            [one] => format!("unsupported content type `{one}`; {kind} sends {expected}"),
            many => format!(
                "unsupported content type: {} Content-Type headers ({})",
                many.len(),
                many.join(", ")
            ),
        };
        Err(ContentTypeRefusal { reason })
    }
}

/// A notification refused for its `Content-Type`, before it is parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ContentTypeRefusal {
    /// What came and what the provider sends: stored with the notification and logged.
    pub reason: String,
}

impl ContentTypeRefusal {
    /// The HTTP status of the answer.
    pub const STATUS: u16 = 415;
    /// What the answer says: only the kind of refusal, the reason stays in the record.
    pub const MESSAGE: &'static str = "unsupported content type";

    /// The provider's failure answer saying [`Self::MESSAGE`], with [`Self::STATUS`].
    pub fn answer(&self, provider: &dyn Provider) -> Answer {
        let mut a = provider.failure(Self::MESSAGE);
        a.status = Self::STATUS;
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: ProviderKind) -> ContentTypes {
        match kind {
            ProviderKind::WechatV2 => wechat_v2::CONTENT_TYPES,
            ProviderKind::WechatV3 => wechat_v3::CONTENT_TYPES,
            ProviderKind::Alipay => alipay::CONTENT_TYPES,
            ProviderKind::Cloudpay => cloudpay::CONTENT_TYPES,
            ProviderKind::WechatXpay => wechat_xpay::CONTENT_TYPES,
        }
    }

    #[test]
    fn content_types_are_checked_per_provider() {
        use ProviderKind::*;
        let ok: &[(ProviderKind, &[&[u8]])] = &[
            (WechatV2, &[]),
            (WechatV2, &[b"text/xml"]),
            (WechatV2, &[b"Text/XML; charset=UTF-8"]),
            (WechatV2, &[b"application/xml"]),
            (
                Alipay,
                &[b"application/x-www-form-urlencoded; charset=utf-8"],
            ),
            (WechatV3, &[b"application/json"]),
            (Cloudpay, &[b" application/json ;charset=utf-8"]),
            (WechatXpay, &[b"application/json"]),
            (WechatXpay, &[]),
        ];
        for (kind, values) in ok {
            assert!(
                rule(*kind).check(*kind, values).is_ok(),
                "{kind} {values:?}"
            );
        }
        let refused: &[(ProviderKind, &[&[u8]])] = &[
            (WechatV2, &[b""]),
            (WechatV2, &[b"application/json"]),
            (WechatV2, &[b"text/xml", b"text/xml"]),
            (WechatV2, &[b"text/xml\xff"]),
            (WechatV2, &[b"text/xmlx"]),
            (Alipay, &[]),
            (Alipay, &[b"multipart/form-data"]),
            (WechatV3, &[]),
            (WechatV3, &[b"text/json"]),
            (Cloudpay, &[b"application/x-www-form-urlencoded"]),
            (WechatXpay, &[b"text/xml"]),
        ];
        for (kind, values) in refused {
            assert!(
                rule(*kind).check(*kind, values).is_err(),
                "{kind} {values:?}"
            );
        }
    }

    #[test]
    fn content_type_refusals_name_what_came_and_what_is_sent() {
        let reason = |kind: ProviderKind, values: &[&[u8]]| {
            rule(kind).check(kind, values).expect_err("refused").reason
        };
        assert_eq!(
            reason(ProviderKind::Alipay, &[]),
            "unsupported content type: none given; alipay sends application/x-www-form-urlencoded"
        );
        assert_eq!(
            reason(ProviderKind::WechatV2, &[b"application/json"]),
            "unsupported content type `application/json`; wechat-v2 sends text/xml or application/xml"
        );
        assert_eq!(
            reason(ProviderKind::WechatV3, &[b"text/xml\xff"]),
            "unsupported content type `text/xml\u{fffd}`; wechat-v3 sends application/json"
        );
        assert_eq!(
            reason(ProviderKind::Cloudpay, &[b"a/b", b"application/json"]),
            "unsupported content type: 2 Content-Type headers (a/b, application/json)"
        );
    }

    #[test]
    fn a_content_type_refusal_is_the_providers_failure_with_415() {
        let p = wechat_v2::WechatV2::new(vec![wechat_v2::Account::new("a", "wx", "1", "k")]);
        let refused = p.check_content_type(&[b"text/plain"]).expect_err("refused");
        let a = refused.answer(&p);
        let mut want = p.failure("unsupported content type");
        want.status = 415;
        assert_eq!(a, want);
    }
}
