//! What every provider call names and gets back, and how its answer is kept: the order
//! a call is about ([`OrderRef`]), the answer as received ([`ProviderAnswer`]), and the
//! headers that mark a stored answer as one (a query answer that settled a payment, a
//! refund answer that settled a refund) so that a replay verifies it as such.
//!
//! Kept apart from [`super::api`] (the calls), so that [`super::pay`] (what placing and
//! refunding send and get back) can name these without depending on the calls.

use super::Inbound;

/// The header that marks a stored notification as a provider's answer to our query
/// rather than a notification the provider sent.
pub const SOURCE_HEADER: &str = "x-paynotify-source";

/// The value of [`SOURCE_HEADER`] on stored query answers.
pub const RECONCILE_SOURCE: &str = "reconcile";

/// The value of [`SOURCE_HEADER`] on stored refund answers that settled a refund (Alipay).
pub const REFUND_SOURCE: &str = "refund";

/// The header of a stored refund answer naming the merchant refund number it answers
/// (Alipay's answer does not repeat it).
pub const OUT_REFUND_NO_HEADER: &str = "x-paynotify-out-refund-no";

/// The header of a stored refund answer naming the fen its request asked for (what the
/// answer settles: see `payments::refund::as_requested`).
pub const REFUND_AMOUNT_HEADER: &str = "x-paynotify-refund-amount";

/// The order a provider call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRef<'a> {
    /// The merchant order number.
    pub out_trade_no: &'a str,
    /// Its sub-merchant, for an order of a WeChat Pay v3 partner account (whose calls
    /// name it); `None` otherwise.
    pub sub_mchid: Option<&'a str>,
}

/// A provider's answer, as received.
#[derive(Debug, Clone)]
pub struct ProviderAnswer {
    /// `METHOD url` of the request.
    pub request: String,
    /// HTTP status.
    pub status: u16,
    /// Headers that matter for verification (names lower-case).
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
    /// When it arrived (unix ms); timestamp windows are checked against it.
    pub received_at: i64,
}

impl ProviderAnswer {
    /// The answer as the verifier sees it, for `account`.
    pub fn inbound<'a>(&'a self, account: &'a str) -> Inbound<'a> {
        Inbound {
            account: Some(account),
            headers: &self.headers,
            body: &self.body,
            received_at: self.received_at,
        }
    }

    /// Headers to store with a query answer: the source marker, the request and status,
    /// then the provider's own headers.
    pub fn stored_headers(&self) -> Vec<(String, String)> {
        self.stored_headers_as(RECONCILE_SOURCE)
    }

    /// Headers to store with an answer from `source` ([`RECONCILE_SOURCE`],
    /// [`REFUND_SOURCE`]).
    pub fn stored_headers_as(&self, source: &str) -> Vec<(String, String)> {
        let mut h = vec![
            (SOURCE_HEADER.to_owned(), source.to_owned()),
            ("x-paynotify-request".to_owned(), self.request.clone()),
            ("x-paynotify-status".to_owned(), self.status.to_string()),
        ];
        h.extend(self.headers.iter().cloned());
        h
    }
}

/// The [`SOURCE_HEADER`] of a stored record: `None` for a notification the provider sent.
pub fn record_source(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(k, _)| k == SOURCE_HEADER)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_records_are_provider_answers() {
        let answer = ProviderAnswer {
            request: "POST https://api.mch.weixin.qq.com/pay/orderquery".into(),
            status: 200,
            headers: vec![("content-type".into(), "text/xml".into())],
            body: Vec::new(),
            received_at: 0,
        };
        assert_eq!(
            record_source(&answer.stored_headers()),
            Some(RECONCILE_SOURCE)
        );
        assert_eq!(record_source(&answer.headers), None);
    }
}
