//! WeChat Pay v2 order API: `orderquery`, `closeorder`, `unifiedorder` and `refund`
//! (`pay.rs`), XML signed with the API key, both ways.
//!
//! The answer is signed like a notification (same `sign` rule, same key, the request's
//! sign type unless the answer names its own); its `appid` and `mch_id` must be this
//! account's. `trade_state` `SUCCESS` is a payment; every other state (`NOTPAY`,
//! `CLOSED`, `USERPAYING`, …) and `ORDERNOTEXIST` is not.
//!
//! An account with extra CAs (`tls.rs`) makes its calls with its own HTTP client, and
//! its refunds with one that presents its client certificate; the others use the host's.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::tls::{account_http, AccountHttp};
use super::{
    parse_time_end, parse_xml, require_return_success, sign_type_of, signed_xml, Account, SignType,
};
use crate::config::AccountConfig;
use crate::providers::api::{
    base, nonce, send, ApiError, CloseOutcome, OrderApi, OrderRef, ProviderAnswer,
};
use crate::providers::common::parse_fen;
use crate::providers::pay::{
    PayFieldError, PayRequest, Placed, Placement, RefundStart, RefundStarted,
};
use crate::providers::{Inbound, Notice, NoticeKind, Payment, ProviderKind, Rejection};

/// WeChat Pay's v2 API host.
pub const DEFAULT_BASE: &str = "https://api.mch.weixin.qq.com";

/// One v2 account's order API: the notification account's keys, both ways.
pub struct Api {
    pub(super) account: Account,
    pub(super) sign_type: SignType,
    base: String,
    /// The account's own clients (client certificate, extra CAs), when it has them.
    own_http: Option<AccountHttp>,
}

impl Api {
    /// The API of a v2 `[[accounts]]` entry whose notification side is `account` (its
    /// notification keys are enough for everything but refunds, which also need
    /// `client_cert` and `client_key`). `Err` names the key that is wrong.
    pub fn from_config(a: &AccountConfig, account: &Account) -> Result<Api, String> {
        Ok(Api {
            account: account.clone(),
            // Requests are signed as the account's notifications must be.
            sign_type: account.pinned.unwrap_or(SignType::Md5),
            base: base(&a.api_base, DEFAULT_BASE),
            own_http: account_http(a)?,
        })
    }

    /// The client calls other than refunds go through: the account's own (extra CAs),
    /// else the host's `shared` one.
    pub(super) fn http<'a>(&'a self, shared: &'a reqwest::Client) -> &'a reqwest::Client {
        self.own_http
            .as_ref()
            .and_then(|h| h.plain.as_ref())
            .unwrap_or(shared)
    }

    /// The account's client that presents its client certificate, if it has one.
    pub(super) fn client_cert_http(&self) -> Option<&reqwest::Client> {
        self.own_http.as_ref().and_then(|h| h.mtls.as_ref())
    }

    /// POSTs `fields` to `path`, with `appid`, `mch_id`, `nonce_str` (and `sign_type`
    /// when not MD5) added and signed with the API key in the account's sign type.
    pub(super) async fn post(
        &self,
        http: &reqwest::Client,
        path: &str,
        mut fields: BTreeMap<String, String>,
    ) -> Result<ProviderAnswer, ApiError> {
        fields.insert("appid".to_owned(), self.account.appid.clone());
        fields.insert("mch_id".to_owned(), self.account.mch_id.clone());
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

    async fn call(
        &self,
        http: &reqwest::Client,
        path: &str,
        out_trade_no: &str,
    ) -> Result<ProviderAnswer, ApiError> {
        let mut fields = BTreeMap::new();
        fields.insert("out_trade_no".to_owned(), out_trade_no.to_owned());
        self.post(self.http(http), path, fields).await
    }

    /// Verifies an answer's signature and merchant ids; returns its fields.
    pub(super) fn verified_fields(
        &self,
        body: &[u8],
    ) -> Result<BTreeMap<String, String>, Rejection> {
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

    fn check_pay(&self, pay: &PayRequest) -> Result<(), PayFieldError> {
        self.check_pay_request(pay)
    }

    async fn place(&self, http: &reqwest::Client, p: &Placement<'_>) -> Result<Placed, ApiError> {
        self.unified_order(http, p).await
    }

    fn check_refund(&self) -> Result<(), String> {
        match self.client_cert_http() {
            Some(_) => Ok(()),
            None => Err(self.no_client_cert()),
        }
    }

    async fn refund(
        &self,
        _http: &reqwest::Client,
        r: &RefundStart<'_>,
    ) -> Result<RefundStarted, ApiError> {
        // Always the account's own client: the shared one has no client certificate.
        self.start_refund(r).await
    }

    fn verify_refund_answer(
        &self,
        _answer: &Inbound<'_>,
        _out_refund_no: &str,
    ) -> Result<Notice, Rejection> {
        // Never stored as a settlement: the answer only says WeChat took the request.
        Err(Rejection::Unsupported(
            "wechat-v2 refund answers are not settlements; WeChat's refund notification settles the refund"
                .into(),
        ))
    }
}
