//! WeChat Pay v2 `orderquery` and `closeorder`: XML signed with the API key, both ways.
//!
//! The answer is signed like a notification (same `sign` rule, same key, the request's
//! sign type unless the answer names its own); its `appid` and `mch_id` must be this
//! account's. `trade_state` `SUCCESS` is a payment; every other state (`NOTPAY`,
//! `CLOSED`, `USERPAYING`, …) and `ORDERNOTEXIST` is not.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{
    parse_time_end, parse_xml, require_return_success, sign_type_of, signed_xml, Account, SignType,
};
use crate::config::AccountConfig;
use crate::providers::api::{
    base, nonce, send, ApiError, CloseOutcome, OrderApi, OrderRef, ProviderAnswer,
};
use crate::providers::common::parse_fen;
use crate::providers::{Inbound, Notice, NoticeKind, Payment, ProviderKind, Rejection};

/// WeChat Pay's v2 API host.
pub const DEFAULT_BASE: &str = "https://api.mch.weixin.qq.com";

/// One v2 account's order API: the notification account's keys, both ways.
pub struct Api {
    account: Account,
    sign_type: SignType,
    base: String,
}

impl Api {
    /// The API of a v2 `[[accounts]]` entry whose notification side is `account` (its
    /// notification keys are enough).
    pub fn from_config(a: &AccountConfig, account: &Account) -> Api {
        Api {
            account: account.clone(),
            // Requests are signed as the account's notifications must be.
            sign_type: account.pinned.unwrap_or(SignType::Md5),
            base: base(&a.api_base, DEFAULT_BASE),
        }
    }

    async fn call(
        &self,
        http: &reqwest::Client,
        path: &str,
        out_trade_no: &str,
    ) -> Result<ProviderAnswer, ApiError> {
        let mut fields = BTreeMap::new();
        fields.insert("appid".to_owned(), self.account.appid.clone());
        fields.insert("mch_id".to_owned(), self.account.mch_id.clone());
        fields.insert("out_trade_no".to_owned(), out_trade_no.to_owned());
        fields.insert("nonce_str".to_owned(), nonce());
        if self.sign_type == SignType::HmacSha256 {
            fields.insert("sign_type".to_owned(), "HMAC-SHA256".to_owned());
        }
        let url = format!("{}{path}", self.base);
        let request = http
            .post(&url)
            .header("content-type", "text/xml; charset=utf-8")
            .body(signed_xml(&fields, &self.account.api_key, self.sign_type));
        send(request, format!("POST {url}"), |h| h == "content-type").await
    }

    /// Verifies an answer's signature and merchant ids; returns its fields.
    fn verified_fields(&self, body: &[u8]) -> Result<BTreeMap<String, String>, Rejection> {
        let fields = parse_xml(body)?;
        require_return_success(&fields)?;
        // An answer may name its own sign type; without one it is the request's.
        let sign_type = sign_type_of(&fields, self.sign_type)?;
        self.account.check_sign(&fields, sign_type)?;
        self.account.check_ids(&fields)?;
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
        order: OrderRef<'_>,
    ) -> Result<ProviderAnswer, ApiError> {
        self.call(http, "/pay/orderquery", order.out_trade_no).await
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
                amount: parse_fen(get("total_fee"), "total_fee")?,
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
            account: self.account.name.clone(),
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
        let answer = self
            .call(http, "/pay/closeorder", order.out_trade_no)
            .await?;
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
