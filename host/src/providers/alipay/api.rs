//! Alipay `alipay.trade.query` and `alipay.trade.close` through `{api_base}/gateway.do`;
//! placing payments and starting refunds (`pay.rs`) sign and verify here too.
//!
//! Requests are RSA2-signed with the app private key over every non-empty parameter
//! except `sign`, sorted, `k=v&…`. Answers are JSON,
//! `{"alipay_trade_query_response":{…},"sign":"…"}`, where `sign` is Alipay's RSA2
//! signature over the raw text of the `…_response` value exactly as sent: that text is
//! cut out of the body, never re-serialised. `TRADE_SUCCESS` and `TRADE_FINISHED` are a
//! payment; `WAIT_BUYER_PAY`, `TRADE_CLOSED` and `ACQ.TRADE_NOT_EXIST` are not.
//!
//! A certificate-mode account also sends `app_cert_sn` and `alipay_root_cert_sn`, and its
//! answers carry `alipay_cert_sn` beside `sign`, naming the certificate that signed them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rsa::pkcs1v15::SigningKey;
use serde_json::Value;
use sha2::Sha256;

use super::{parse_gmt, yuan_to_fen, Account};
use crate::config::AccountConfig;
use crate::providers::api::{
    base, parse_private_key, rsa_sign, send, ApiError, CloseOutcome, OrderApi, OrderRef,
    ProviderAnswer,
};
use crate::providers::pay::{
    PayFieldError, PayRequest, Placed, Placement, RefundStart, RefundStarted,
};
use crate::providers::{Inbound, Notice, NoticeKind, Payment, ProviderKind, Rejection};

/// Alipay's gateway host.
pub const DEFAULT_BASE: &str = "https://openapi.alipay.com";

const QUERY: &str = "alipay.trade.query";
const CLOSE: &str = "alipay.trade.close";

/// One Alipay app's order API.
pub struct Api {
    signer: SigningKey<Sha256>,
    /// The notification side of the app: Alipay's public key or certificate.
    verifier: Account,
    base: String,
}

/// One gateway request: its `method`, its `biz_content`, and the common parameters it
/// takes beyond those every request has (`notify_url`, `return_url`).
pub(super) struct Request<'a> {
    /// `alipay.trade.query`, `alipay.trade.page.pay`, …
    pub method: &'a str,
    /// The business parameters, sent as one JSON text.
    pub biz_content: Value,
    /// More common parameters; empty ones are left out.
    pub extra: Vec<(&'static str, String)>,
}

impl<'a> Request<'a> {
    /// `method` with `biz_content` and no other parameter.
    pub(super) fn new(method: &'a str, biz_content: Value) -> Request<'a> {
        Request {
            method,
            biz_content,
            extra: Vec::new(),
        }
    }
}

impl Api {
    /// The API of an Alipay `[[accounts]]` entry whose notification side is `verifier`,
    /// or `None` when it has no app private key (then it can receive notifications but
    /// not query).
    pub fn from_config(a: &AccountConfig, verifier: &Account) -> Result<Option<Api>, String> {
        let Some(key_text) = &a.app_private_key else {
            return Ok(None);
        };
        let key =
            parse_private_key(key_text).map_err(|e| format!("`app_private_key_file`: {e}"))?;
        if let Some(app_key) = verifier.cert_mode().and_then(|c| c.app_key()) {
            // Alipay refuses a request whose signature the app certificate does not verify;
            // say which files disagree now rather than in every query's error.
            if *app_key != key.to_public_key() {
                return Err(
                    "`app_cert_file` is not the certificate of `app_private_key_file`".into(),
                );
            }
        }
        Ok(Some(Api {
            signer: SigningKey::new(key),
            verifier: verifier.clone(),
            base: base(&a.api_base, DEFAULT_BASE),
        }))
    }

    /// Every parameter of `request`, sent at `timestamp`, and its `sign`: RSA2 with the
    /// app private key over every non-empty parameter but `sign` (`sign_type` included),
    /// sorted by name, `k=v` joined by `&`, values as they are (not URL-encoded). The one
    /// place requests are signed: calls to the gateway, and the URLs and order strings
    /// the buyer's browser or app sends to Alipay itself (`pay.rs`).
    pub(super) fn signed_params(
        &self,
        request: &Request<'_>,
        timestamp: &str,
    ) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        for (k, v) in [
            ("app_id", self.verifier.app_id.as_str()),
            ("method", request.method),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("version", "1.0"),
            ("timestamp", timestamp),
        ] {
            params.insert(k.to_owned(), v.to_owned());
        }
        if let Some(certs) = self.verifier.cert_mode() {
            // Certificate mode: Alipay finds the app's certificate and the root it trusts
            // by these, and both are signed with the rest.
            params.insert("app_cert_sn".to_owned(), certs.app_cert_sn().to_owned());
            params.insert(
                "alipay_root_cert_sn".to_owned(),
                certs.root_cert_sn().to_owned(),
            );
        }
        for (k, v) in &request.extra {
            // Left out when empty, as Alipay's SDKs do: an empty parameter is not signed.
            if !v.is_empty() {
                params.insert((*k).to_owned(), v.clone());
            }
        }
        params.insert("biz_content".to_owned(), request.biz_content.to_string());
        let text = params
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let sign = rsa_sign(&self.signer, text.as_bytes());
        params.insert("sign".to_owned(), sign);
        params
    }

    /// The signed parameters of `request` ([`Api::signed_params`]) as a URL-encoded form:
    /// the body of a gateway call, the query of a `page` / `wap` URL, an `app` order
    /// string.
    pub(super) fn signed_form(&self, request: &Request<'_>, timestamp: &str) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.signed_params(request, timestamp) {
            form.append_pair(k, v);
        }
        form.finish()
    }

    /// The account's name.
    pub(super) fn account_name(&self) -> &str {
        &self.verifier.name
    }

    /// `{api_base}/gateway.do`.
    pub(super) fn gateway(&self) -> String {
        format!("{}/gateway.do", self.base)
    }

    /// Sends `request` to the gateway, signed now; the answer is not verified yet.
    pub(super) async fn call(
        &self,
        http: &reqwest::Client,
        request: &Request<'_>,
    ) -> Result<ProviderAnswer, ApiError> {
        // Built in a function of its own: the serializer is not Send and must be gone
        // before the await below.
        let form = self.signed_form(request, &china_now());
        let url = self.gateway();
        let http_request = http
            .post(&url)
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(form);
        send(
            http_request,
            format!("POST {url} {}", request.method),
            |h| h == "content-type",
        )
        .await
    }

    /// Asks `method` about `out_trade_no` alone (query, close).
    async fn call_about(
        &self,
        http: &reqwest::Client,
        method: &str,
        out_trade_no: &str,
    ) -> Result<ProviderAnswer, ApiError> {
        let request = Request::new(method, serde_json::json!({ "out_trade_no": out_trade_no }));
        self.call(http, &request).await
    }

    /// Verifies an answer's signature over the raw text of its `…_response` value and
    /// returns that value.
    pub(super) fn verified_response(&self, body: &[u8], method: &str) -> Result<Value, Rejection> {
        let whole: Value = serde_json::from_slice(body)
            .map_err(|e| Rejection::Malformed(format!("answer is not JSON: {e}")))?;
        let own = format!("{}_response", method.replace('.', "_"));
        let key = if whole.get(&own).is_some() {
            own
        } else if whole.get("error_response").is_some() {
            "error_response".to_owned()
        } else {
            return Err(Rejection::Malformed(format!("answer has no `{own}`")));
        };
        let raw = raw_member(body, &key, &whole[&key])
            .ok_or_else(|| Rejection::Malformed(format!("cannot locate `{key}` in the answer")))?;
        let sign = whole.get("sign").and_then(Value::as_str).unwrap_or("");
        // Beside the response, unsigned: it can only pick among the certificates the
        // account holds, and one it does not hold is refused.
        let cert_sn = whole.get("alipay_cert_sn").and_then(Value::as_str);
        self.verifier.verify_rsa2(raw, sign, cert_sn)?;
        Ok(whole[&key].clone())
    }
}

/// The raw bytes of top-level member `key` of the JSON object `body`, checked to parse
/// to `expected` (so a look-alike key inside a nested value is never taken for it).
fn raw_member<'a>(body: &'a [u8], key: &str, expected: &Value) -> Option<&'a [u8]> {
    let needle = format!("\"{key}\"");
    let mut from = 0;
    while let Some(pos) = find(&body[from..], needle.as_bytes()) {
        let mut i = from + pos + needle.len();
        while i < body.len() && body[i].is_ascii_whitespace() {
            i += 1;
        }
        if body.get(i) == Some(&b':') {
            i += 1;
            while i < body.len() && body[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut values = serde_json::Deserializer::from_slice(&body[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = values.next() {
                let end = i + values.byte_offset();
                if &v == expected {
                    return Some(&body[i..end]);
                }
            }
        }
        from += pos + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Now as Alipay's `timestamp` wants it: `yyyy-MM-dd HH:mm:ss` in China Standard Time.
pub(super) fn china_now() -> String {
    china_time(time::OffsetDateTime::now_utc())
}

/// `at` as Alipay writes times (`timestamp`, `time_expire`): `yyyy-MM-dd HH:mm:ss` in
/// China Standard Time, seconds truncated.
pub(super) fn china_time(at: time::OffsetDateTime) -> String {
    let cst = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    at.to_offset(cst)
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
}

/// Member `key` of an answer as text (numbers as written, absent as empty).
pub(super) fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[async_trait]
impl OrderApi for Api {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Alipay
    }

    async fn query(
        &self,
        http: &reqwest::Client,
        order: OrderRef<'_>,
    ) -> Result<ProviderAnswer, ApiError> {
        self.call_about(http, QUERY, order.out_trade_no).await
    }

    fn verify_query(&self, answer: &Inbound<'_>) -> Result<Notice, Rejection> {
        let r = self.verified_response(answer.body, QUERY)?;
        let mut fields = BTreeMap::new();
        if let Some(map) = r.as_object() {
            for k in map.keys() {
                fields.insert(k.clone(), text(&r, k));
            }
        }
        let out_trade_no = text(&r, "out_trade_no");
        let code = text(&r, "code");
        let trade_status = text(&r, "trade_status");
        let kind = match (code.as_str(), trade_status.as_str()) {
            ("10000", "TRADE_SUCCESS" | "TRADE_FINISHED") => {
                if out_trade_no.is_empty() {
                    return Err(Rejection::Malformed("no out_trade_no".into()));
                }
                let trade_no = text(&r, "trade_no");
                if trade_no.is_empty() {
                    return Err(Rejection::Malformed("no trade_no".into()));
                }
                let amount = yuan_to_fen(&text(&r, "total_amount")).ok_or_else(|| {
                    Rejection::Malformed(format!(
                        "total_amount `{}` is not an amount in yuan",
                        text(&r, "total_amount")
                    ))
                })?;
                NoticeKind::Paid(Payment {
                    transaction_id: trade_no,
                    amount,
                    paid_at: parse_gmt(&text(&r, "send_pay_date")),
                })
            }
            ("10000", state) => NoticeKind::NotPaid {
                state: state.to_owned(),
            },
            // Never created at Alipay: the buyer did not open the cashier.
            (_, _) if text(&r, "sub_code") == "ACQ.TRADE_NOT_EXIST" => NoticeKind::NotPaid {
                state: "ACQ.TRADE_NOT_EXIST".to_owned(),
            },
            (_, _) => {
                return Err(Rejection::Unsupported(format!(
                    "alipay.trade.query error {code} {} {}",
                    text(&r, "sub_code"),
                    text(&r, "sub_msg")
                )))
            }
        };
        Ok(Notice {
            account: self.verifier.name.clone(),
            out_trade_no,
            kind,
            fields,
            sub_mchid: None,
        })
    }

    async fn close(
        &self,
        http: &reqwest::Client,
        order: OrderRef<'_>,
    ) -> Result<CloseOutcome, ApiError> {
        let answer = self.call_about(http, CLOSE, order.out_trade_no).await?;
        let r = self.verified_response(&answer.body, CLOSE)?;
        let code = text(&r, "code");
        let sub_code = text(&r, "sub_code");
        match (code.as_str(), sub_code.as_str()) {
            ("10000", _) => Ok(CloseOutcome::Closed),
            // Never created at Alipay (the buyer never opened the cashier): nothing to close.
            (_, "ACQ.TRADE_NOT_EXIST") => Ok(CloseOutcome::Closed),
            // Only an unpaid trade can be closed: this one was paid (or finished).
            (_, "ACQ.TRADE_STATUS_ERROR") => Ok(CloseOutcome::AlreadyPaid),
            _ => Err(ApiError::Provider(format!(
                "alipay.trade.close: {code} {sub_code} {}",
                text(&r, "sub_msg")
            ))),
        }
    }

    fn check_pay(&self, pay: &PayRequest) -> Result<(), PayFieldError> {
        self.check_pay_request(pay)
    }

    async fn place(&self, http: &reqwest::Client, p: &Placement<'_>) -> Result<Placed, ApiError> {
        self.place_payment(http, p).await
    }

    async fn refund(
        &self,
        http: &reqwest::Client,
        r: &RefundStart<'_>,
    ) -> Result<RefundStarted, ApiError> {
        self.start_refund(http, r).await
    }

    fn verify_refund_answer(
        &self,
        answer: &Inbound<'_>,
        out_refund_no: &str,
    ) -> Result<Notice, Rejection> {
        self.verify_stored_refund(answer, out_refund_no)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_text_is_the_top_level_member_as_sent() {
        let body = br#"{"x":{"alipay_trade_query_response":{"code":"1"}}, "alipay_trade_query_response" : {"code":"10000",  "msg":"Success"},"sign":"c2ln"}"#;
        let whole: Value = serde_json::from_slice(body).expect("json");
        let key = "alipay_trade_query_response";
        let raw = raw_member(body, key, &whole[key]).expect("found");
        assert_eq!(raw, br#"{"code":"10000",  "msg":"Success"}"#);
        assert_eq!(raw_member(body, "absent", &Value::Null), None);
    }
}
