//! Alipay `alipay.trade.query` and `alipay.trade.close` through `{api_base}/gateway.do`.
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

    /// The signed form of a `method` request about `out_trade_no`, sent at `timestamp`.
    pub(super) fn signed_form(&self, method: &str, out_trade_no: &str, timestamp: &str) -> String {
        let mut params = BTreeMap::new();
        for (k, v) in [
            ("app_id", self.verifier.app_id.as_str()),
            ("method", method),
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
        params.insert(
            "biz_content".to_owned(),
            serde_json::json!({ "out_trade_no": out_trade_no }).to_string(),
        );
        let text = params
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let sign = rsa_sign(&self.signer, text.as_bytes());
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &params {
            form.append_pair(k, v);
        }
        form.append_pair("sign", &sign);
        form.finish()
    }

    async fn call(
        &self,
        http: &reqwest::Client,
        method: &str,
        out_trade_no: &str,
    ) -> Result<ProviderAnswer, ApiError> {
        // Built in a function of its own: the serializer is not Send and must be gone
        // before the await below.
        let form = self.signed_form(method, out_trade_no, &china_now());
        let url = format!("{}/gateway.do", self.base);
        let request = http
            .post(&url)
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(form);
        send(request, format!("POST {url} {method}"), |h| {
            h == "content-type"
        })
        .await
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
fn china_now() -> String {
    let cst = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::now_utc()
        .to_offset(cst)
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]"
        ))
        .unwrap_or_default()
}

fn text(v: &Value, key: &str) -> String {
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
        self.call(http, QUERY, order.out_trade_no).await
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
        let answer = self.call(http, CLOSE, order.out_trade_no).await?;
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
