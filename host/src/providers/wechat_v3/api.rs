//! WeChat Pay v3 order query (`GET /v3/pay/transactions/out-trade-no/{no}?mchid=…`) and
//! close (`POST …/{no}/close`).
//!
//! Requests carry `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,nonce_str=…,
//! signature=…,timestamp=…,serial_no=…`, the signature being SHA256withRSA with the
//! merchant API private key over `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n`.
//! Answers are signed by WeChat Pay exactly as notifications are and are verified by the
//! notification code ([`verify_signed`]): same keys, same timestamp window. The query
//! answer is the transaction in clear (notifications encrypt it); its `mchid` and `appid`
//! must be this account's.

use std::collections::BTreeMap;

use async_trait::async_trait;
use rsa::pkcs1v15::SigningKey;
use serde_json::Value;
use sha2::Sha256;

use crate::providers::api::{send, ApiError, CloseOutcome, OrderApi, ProviderAnswer};
use crate::config::AccountConfig;
use crate::providers::wechat_v3::{flatten, verify_signed, Account, SIGNATURE_TYPE};
use crate::providers::{Inbound, Notice, NoticeKind, Payment, ProviderKind, Rejection};

/// WeChat Pay's v3 API host.
pub const DEFAULT_BASE: &str = "https://api.mch.weixin.qq.com";

/// One v3 account's order API.
pub struct Api {
    name: String,
    appid: String,
    mch_id: String,
    serial_no: String,
    signer: SigningKey<Sha256>,
    /// The notification side of the account: its WeChat Pay verifying keys.
    verifier: Account,
    base: String,
}

impl Api {
    /// The API of a v3 `[[accounts]]` entry, or `None` when it has no merchant key
    /// (then it can receive notifications but not query).
    pub fn from_config(a: &AccountConfig) -> Result<Option<Api>, String> {
        let (Some(key_text), Some(serial_no)) = (&a.merchant_private_key, &a.merchant_serial_no)
        else {
            if a.merchant_private_key.is_some() || a.merchant_serial_no.is_some() {
                return Err(
                    "`merchant_private_key_file` and `merchant_serial_no` go together".into(),
                );
            }
            return Ok(None);
        };
        let key = crate::providers::api::parse_private_key(key_text)
            .map_err(|e| format!("`merchant_private_key_file`: {e}"))?;
        let verifier = Account::from_config(a)?;
        Ok(Some(Api {
            name: a.name.clone(),
            appid: a.appid.clone().unwrap_or_default(),
            mch_id: a.mch_id.clone().unwrap_or_default(),
            serial_no: serial_no.clone(),
            signer: SigningKey::new(key),
            verifier,
            base: crate::providers::api::base(&a.api_base, DEFAULT_BASE),
        }))
    }

    /// The `Authorization` header for a request.
    fn authorization(&self, method: &str, path_and_query: &str, body: &str) -> String {
        let timestamp = crate::store::now_ms() / 1000;
        let nonce = crate::providers::api::nonce();
        let message = format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body}\n");
        let signature = crate::providers::api::rsa_sign(&self.signer, message.as_bytes());
        format!(
            "{SIGNATURE_TYPE} mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{}\"",
            self.mch_id, self.serial_no
        )
    }

    async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<ProviderAnswer, ApiError> {
        let url = format!("{}{path_and_query}", self.base);
        let body_text = body.clone().unwrap_or_default();
        let auth = self.authorization(method.as_str(), path_and_query, &body_text);
        let mut request = http
            .request(method.clone(), &url)
            .header("authorization", auth)
            .header("accept", "application/json");
        if let Some(b) = body {
            request = request.header("content-type", "application/json").body(b);
        }
        send(request, format!("{method} {url}"), |h| {
            h.starts_with("wechatpay-") || h == "content-type" || h == "request-id"
        })
        .await
    }

    /// Verifies an answer's signature; returns its JSON body (`null` when empty).
    fn verified_body(&self, answer: &Inbound<'_>) -> Result<Value, Rejection> {
        verify_signed(std::slice::from_ref(&self.verifier), answer)?;
        if answer.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(answer.body)
            .map_err(|e| Rejection::Malformed(format!("answer is not JSON: {e}")))
    }
}

/// Percent-encodes an order number for a path segment (they are usually plain, but a
/// `/` or `?` must not change the path that is signed).
fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

#[async_trait]
impl OrderApi for Api {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WechatV3
    }

    async fn query(
        &self,
        http: &reqwest::Client,
        out_trade_no: &str,
    ) -> Result<ProviderAnswer, ApiError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            segment(out_trade_no),
            segment(&self.mch_id)
        );
        self.call(http, reqwest::Method::GET, &path, None).await
    }

    fn verify_query(&self, answer: &Inbound<'_>) -> Result<Notice, Rejection> {
        let tx = self.verified_body(answer)?;
        if !tx.is_object() {
            return Err(Rejection::Malformed("answer is not a JSON object".into()));
        }
        let mut fields = BTreeMap::new();
        flatten(&tx, "", &mut fields);
        if tx.get("trade_state").is_none() {
            // An error answer (`{"code":"ORDER_NOT_EXIST","message":…}`), signed too.
            let code = str_field(&tx, "code");
            if code != "ORDER_NOT_EXIST" {
                return Err(Rejection::Unsupported(format!(
                    "query error `{code}`: {}",
                    str_field(&tx, "message")
                )));
            }
            return Ok(Notice {
                account: self.name.clone(),
                out_trade_no: String::new(),
                kind: NoticeKind::NotPaid {
                    state: code.to_owned(),
                },
                fields,
            });
        }
        if str_field(&tx, "mchid") != self.mch_id || str_field(&tx, "appid") != self.appid {
            return Err(Rejection::AccountMismatch(format!(
                "appid/mchid {}/{} do not belong to account `{}`",
                str_field(&tx, "appid"),
                str_field(&tx, "mchid"),
                self.name
            )));
        }
        let out_trade_no = str_field(&tx, "out_trade_no").to_owned();
        let trade_state = str_field(&tx, "trade_state");
        let kind = if trade_state == "SUCCESS" {
            if out_trade_no.is_empty() {
                return Err(Rejection::Malformed("no out_trade_no".into()));
            }
            let transaction_id = str_field(&tx, "transaction_id");
            if transaction_id.is_empty() {
                return Err(Rejection::Malformed("no transaction_id".into()));
            }
            let amount = tx
                .get("amount")
                .and_then(|a| a.get("total"))
                .and_then(Value::as_i64)
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    Rejection::Malformed("amount.total is not an amount in fen".into())
                })?;
            NoticeKind::Paid(Payment {
                transaction_id: transaction_id.to_owned(),
                amount,
                paid_at: crate::store::parse_time(str_field(&tx, "success_time")).ok(),
            })
        } else {
            NoticeKind::NotPaid {
                state: trade_state.to_owned(),
            }
        };
        Ok(Notice {
            account: self.name.clone(),
            out_trade_no,
            kind,
            fields,
        })
    }

    async fn close(
        &self,
        http: &reqwest::Client,
        out_trade_no: &str,
    ) -> Result<CloseOutcome, ApiError> {
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}/close",
            segment(out_trade_no)
        );
        let body = serde_json::json!({ "mchid": self.mch_id }).to_string();
        let answer = self
            .call(http, reqwest::Method::POST, &path, Some(body))
            .await?;
        let verified = self.verified_body(&answer.inbound(&self.name))?;
        // Decided on the signed body, not the (unsigned) status: 204 has none.
        if verified.is_null() && (200..300).contains(&answer.status) {
            return Ok(CloseOutcome::Closed);
        }
        let code = str_field(&verified, "code");
        match code {
            "ORDER_PAID" | "ORDERPAID" | "TRADE_PAID" => Ok(CloseOutcome::AlreadyPaid),
            "ORDER_CLOSED" | "ORDERCLOSED" | "ORDER_NOT_EXIST" => Ok(CloseOutcome::Closed),
            _ => Err(ApiError::Provider(format!(
                "close: HTTP {} {code} {}",
                answer.status,
                str_field(&verified, "message")
            ))),
        }
    }
}
