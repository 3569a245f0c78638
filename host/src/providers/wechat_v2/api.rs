//! WeChat Pay v2 `orderquery` and `closeorder`: XML signed with the API key, both ways.
//!
//! The answer is signed like a notification (same `sign` rule, same key, the request's
//! sign type unless the answer names its own); its `appid` and `mch_id` must be this
//! account's. `trade_state` `SUCCESS` is a payment; every other state (`NOTPAY`,
//! `CLOSED`, `USERPAYING`, …) and `ORDERNOTEXIST` is not.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::providers::api::{send, ApiError, CloseOutcome, OrderApi, ProviderAnswer};
use crate::config::AccountConfig;
use crate::providers::wechat_v2::{parse_time_end, parse_xml, sign, signed_xml, SignType};
use crate::providers::{Inbound, Notice, NoticeKind, Payment, ProviderKind, Rejection};

/// WeChat Pay's v2 API host.
pub const DEFAULT_BASE: &str = "https://api.mch.weixin.qq.com";

/// One v2 account's order API.
pub struct Api {
    name: String,
    appid: String,
    mch_id: String,
    api_key: String,
    sign_type: SignType,
    base: String,
}

impl Api {
    /// The API of a v2 `[[accounts]]` entry (its notification keys are enough).
    pub fn from_config(a: &AccountConfig) -> Result<Api, String> {
        let required = |v: &Option<String>, key: &str| {
            crate::providers::required(v, key, key == "api_key", ProviderKind::WechatV2)
        };
        let sign_type = match a.sign_type.as_deref() {
            Some("HMAC-SHA256") => SignType::HmacSha256,
            _ => SignType::Md5,
        };
        Ok(Api {
            name: a.name.clone(),
            appid: required(&a.appid, "appid")?,
            mch_id: required(&a.mch_id, "mch_id")?,
            api_key: required(&a.api_key, "api_key")?,
            sign_type,
            base: crate::providers::api::base(&a.api_base, DEFAULT_BASE),
        })
    }

    async fn call(
        &self,
        http: &reqwest::Client,
        path: &str,
        out_trade_no: &str,
    ) -> Result<ProviderAnswer, ApiError> {
        let mut fields = BTreeMap::new();
        fields.insert("appid".to_owned(), self.appid.clone());
        fields.insert("mch_id".to_owned(), self.mch_id.clone());
        fields.insert("out_trade_no".to_owned(), out_trade_no.to_owned());
        fields.insert("nonce_str".to_owned(), crate::providers::api::nonce());
        if self.sign_type == SignType::HmacSha256 {
            fields.insert("sign_type".to_owned(), "HMAC-SHA256".to_owned());
        }
        let url = format!("{}{path}", self.base);
        let request = http
            .post(&url)
            .header("content-type", "text/xml; charset=utf-8")
            .body(signed_xml(&fields, &self.api_key, self.sign_type));
        send(request, format!("POST {url}"), |h| h == "content-type").await
    }

    /// Verifies an answer's signature and merchant ids; returns its fields.
    fn verified_fields(&self, body: &[u8]) -> Result<BTreeMap<String, String>, Rejection> {
        let fields = parse_xml(body)?;
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        if get("return_code") != "SUCCESS" {
            // WeChat does not sign communication failures: nothing in it can be believed.
            return Err(Rejection::Unsupported(format!(
                "return_code `{}` ({})",
                get("return_code"),
                get("return_msg")
            )));
        }
        let sign_type = match fields.get("sign_type").map(String::as_str) {
            None => self.sign_type,
            Some("MD5") => SignType::Md5,
            Some("HMAC-SHA256") => SignType::HmacSha256,
            Some(other) => return Err(Rejection::Unsupported(format!("sign_type `{other}`"))),
        };
        let received = get("sign").to_ascii_uppercase();
        if received.is_empty() {
            return Err(Rejection::BadSignature("no `sign` field".into()));
        }
        let expected = sign(&fields, &self.api_key, sign_type);
        if !crate::providers::ct_eq(expected.as_bytes(), received.as_bytes()) {
            return Err(Rejection::BadSignature("signature does not match".into()));
        }
        if get("appid") != self.appid || get("mch_id") != self.mch_id {
            return Err(Rejection::AccountMismatch(format!(
                "appid/mch_id {}/{} do not belong to account `{}`",
                get("appid"),
                get("mch_id"),
                self.name
            )));
        }
        Ok(fields)
    }
}

#[async_trait]
impl OrderApi for Api {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WechatV2
    }

    async fn query(
        &self,
        http: &reqwest::Client,
        out_trade_no: &str,
    ) -> Result<ProviderAnswer, ApiError> {
        self.call(http, "/pay/orderquery", out_trade_no).await
    }

    fn verify_query(&self, answer: &Inbound<'_>) -> Result<Notice, Rejection> {
        let fields = self.verified_fields(answer.body)?;
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        let out_trade_no = get("out_trade_no").to_owned();
        let kind = if get("result_code") == "SUCCESS" && get("trade_state") == "SUCCESS" {
            if out_trade_no.is_empty() {
                return Err(Rejection::Malformed("no out_trade_no".into()));
            }
            let transaction_id = get("transaction_id");
            if transaction_id.is_empty() {
                return Err(Rejection::Malformed("no transaction_id".into()));
            }
            NoticeKind::Paid(Payment {
                transaction_id: transaction_id.to_owned(),
                amount: crate::providers::parse_fen(get("total_fee"), "total_fee")?,
                paid_at: parse_time_end(get("time_end")),
            })
        } else if get("result_code") == "SUCCESS" {
            NoticeKind::NotPaid {
                state: get("trade_state").to_owned(),
            }
        } else if get("err_code") == "ORDERNOTEXIST" {
            // Never created at WeChat: the buyer did not get as far as paying.
            NoticeKind::NotPaid {
                state: "ORDERNOTEXIST".to_owned(),
            }
        } else {
            return Err(Rejection::Unsupported(format!(
                "orderquery error {} {}",
                get("err_code"),
                get("err_code_des")
            )));
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
        let answer = self.call(http, "/pay/closeorder", out_trade_no).await?;
        let fields = self.verified_fields(&answer.body)?;
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        if get("result_code") == "SUCCESS" {
            return Ok(CloseOutcome::Closed);
        }
        match get("err_code") {
            "ORDERPAID" => Ok(CloseOutcome::AlreadyPaid),
            "ORDERCLOSED" | "ORDERNOTEXIST" => Ok(CloseOutcome::Closed),
            code => Err(ApiError::Provider(format!(
                "closeorder: {code} {}",
                get("err_code_des")
            ))),
        }
    }
}
