//! WeChat Pay v3 order query (`GET /v3/pay/transactions/out-trade-no/{no}?mchid=…`) and
//! close (`POST …/{no}/close`); for a partner account (服务商) their partner forms,
//! `GET /v3/pay/partner/transactions/out-trade-no/{no}?sp_mchid=…&sub_mchid=…` and
//! `POST …/{no}/close` with `{"sp_mchid","sub_mchid"}`, naming the order's sub-merchant.
//!
//! Requests carry `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,nonce_str=…,
//! signature=…,timestamp=…,serial_no=…`, the signature being SHA256withRSA with the
//! merchant API private key over `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n`.
//! Answers are signed by WeChat Pay exactly as notifications are and are verified by the
//! notification code ([`verify_signed`]): same keys, same timestamp window. The query
//! answer is the transaction in clear (notifications encrypt it); its merchant and app
//! ids must be this account's, checked as a notification's are ([`Mode`]).
//!
//! Placing payments and starting refunds (`pay.rs`) sign and verify through the same
//! [`Api::call`] and [`Api::verified_body`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use rsa::pkcs1v15::SigningKey;
use serde_json::Value;
use sha2::Sha256;

use super::{fen, verify_signed, Account, Mode, SIGNATURE_TYPE};
use crate::config::AccountConfig;
use crate::providers::api::{
    base, nonce, parse_private_key, rsa_sign, send, ApiError, CloseOutcome, OrderApi, OrderRef,
    ProviderAnswer,
};
use crate::providers::json::{flatten, str_or_empty};
use crate::providers::pay::{
    PayFieldError, PayRequest, Placed, Placement, RefundStart, RefundStarted,
};
use crate::providers::{Inbound, Notice, NoticeKind, Payment, ProviderKind, Rejection};

/// WeChat Pay's v3 API host.
pub const DEFAULT_BASE: &str = "https://api.mch.weixin.qq.com";

/// One v3 account's order API.
pub struct Api {
    pub(super) client: Client,
    /// The notification side of the account: its WeChat Pay verifying keys.
    pub(super) verifier: Account,
    /// Direct, or partner with the sub-merchants whose orders it may call about.
    pub(super) mode: Mode,
}

/// What calls WeChat Pay v3 as the merchant: the merchant API key that signs each
/// request, and where to send it. The one place v3 requests are signed, for the order
/// API and the platform certificate download (`certs.rs`) alike.
#[derive(Clone)]
pub(crate) struct Client {
    mch_id: String,
    serial_no: String,
    signer: SigningKey<Sha256>,
    base: String,
}

impl Api {
    /// The API of a v3 `[[accounts]]` entry whose notification side is `verifier` in
    /// `mode`, or `None` when it has no merchant key (then it can receive notifications
    /// but not query).
    pub fn from_config(
        a: &AccountConfig,
        verifier: &Account,
        mode: &Mode,
    ) -> Result<Option<Api>, String> {
        let (Some(key_text), Some(serial_no)) = (&a.merchant_private_key, &a.merchant_serial_no)
        else {
            if a.merchant_private_key.is_some() || a.merchant_serial_no.is_some() {
                return Err(
                    "`merchant_private_key_file` and `merchant_serial_no` go together".into(),
                );
            }
            return Ok(None);
        };
        let key =
            parse_private_key(key_text).map_err(|e| format!("`merchant_private_key_file`: {e}"))?;
        Ok(Some(Api {
            client: Client {
                mch_id: verifier.mch_id.clone(),
                serial_no: serial_no.clone(),
                signer: SigningKey::new(key),
                base: base(&a.api_base, DEFAULT_BASE),
            },
            verifier: verifier.clone(),
            mode: mode.clone(),
        }))
    }

    /// The signing client, for the platform certificate download.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) async fn call(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<ProviderAnswer, ApiError> {
        self.client.call(http, method, path_and_query, body).await
    }

    /// Verifies an answer's signature; returns its JSON body (`null` when empty).
    pub(super) fn verified_body(&self, answer: &Inbound<'_>) -> Result<Value, Rejection> {
        verify_signed(std::slice::from_ref(&self.verifier), answer)?;
        if answer.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(answer.body)
            .map_err(|e| Rejection::Malformed(format!("answer is not JSON: {e}")))
    }
}

impl Client {
    /// SHA256withRSA with the merchant API key, base64: the request signature, and the
    /// client payment parameters' (`paySign`, APP `sign`), which WeChat checks with the
    /// same key's certificate.
    pub(super) fn sign(&self, message: &[u8]) -> String {
        rsa_sign(&self.signer, message)
    }

    /// The `Authorization` header for a request.
    fn authorization(&self, method: &str, path_and_query: &str, body: &str) -> String {
        let timestamp = crate::time::now_ms() / 1000;
        let nonce = nonce();
        let message = format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body}\n");
        let signature = self.sign(message.as_bytes());
        format!(
            "{SIGNATURE_TYPE} mchid=\"{}\",nonce_str=\"{nonce}\",signature=\"{signature}\",timestamp=\"{timestamp}\",serial_no=\"{}\"",
            self.mch_id, self.serial_no
        )
    }

    /// Sends a request signed as the merchant; the answer is not verified yet.
    pub(crate) async fn call(
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
}

impl Api {
    /// The sub-merchant a call about `order` names: none for a direct account; for a
    /// partner account the order's, which must be one of the account's (an order made
    /// before the account became a partner, or whose sub-merchant was removed from the
    /// configuration, cannot be asked about).
    pub(super) fn sub_mchid<'a>(&self, order: OrderRef<'a>) -> Result<Option<&'a str>, ApiError> {
        let Some(subs) = self.mode.sub_merchants() else {
            return Ok(None);
        };
        match order.sub_mchid {
            Some(sub) if subs.contains(&sub) => Ok(Some(sub)),
            other => Err(ApiError::Order(format!(
                "order {} names sub-merchant `{}`, which is not one of partner account `{}`'s",
                order.out_trade_no,
                other.unwrap_or(""),
                self.verifier.name
            ))),
        }
    }
}

/// Percent-encodes an order number for a path segment (they are usually plain, but a
/// `/` or `?` must not change the path that is signed).
fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[async_trait]
impl OrderApi for Api {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WechatV3
    }

    async fn query(
        &self,
        http: &reqwest::Client,
        order: OrderRef<'_>,
    ) -> Result<ProviderAnswer, ApiError> {
        let no = segment(order.out_trade_no);
        let mchid = segment(&self.verifier.mch_id);
        let path = match self.sub_mchid(order)? {
            None => format!("/v3/pay/transactions/out-trade-no/{no}?mchid={mchid}"),
            Some(sub) => format!(
                "/v3/pay/partner/transactions/out-trade-no/{no}?sp_mchid={mchid}&sub_mchid={}",
                segment(sub)
            ),
        };
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
            let code = str_or_empty(&tx, "code");
            if code != "ORDER_NOT_EXIST" {
                return Err(Rejection::Unsupported(format!(
                    "query error `{code}`: {}",
                    str_or_empty(&tx, "message")
                )));
            }
            return Ok(Notice {
                account: self.verifier.name.clone(),
                out_trade_no: String::new(),
                kind: NoticeKind::NotPaid {
                    state: code.to_owned(),
                },
                fields,
                sub_mchid: None,
            });
        }
        let sub_mchid = self.mode.check_owner(&self.verifier, &tx, true)?;
        let out_trade_no = str_or_empty(&tx, "out_trade_no").to_owned();
        let trade_state = str_or_empty(&tx, "trade_state");
        let kind = if trade_state == "SUCCESS" {
            if out_trade_no.is_empty() {
                return Err(Rejection::Malformed("no out_trade_no".into()));
            }
            let transaction_id = str_or_empty(&tx, "transaction_id");
            if transaction_id.is_empty() {
                return Err(Rejection::Malformed("no transaction_id".into()));
            }
            let amount = fen(&tx, "total")?;
            NoticeKind::Paid(Payment {
                transaction_id: transaction_id.to_owned(),
                amount,
                paid_at: crate::time::parse_time(str_or_empty(&tx, "success_time")).ok(),
            })
        } else {
            NoticeKind::NotPaid {
                state: trade_state.to_owned(),
            }
        };
        Ok(Notice {
            account: self.verifier.name.clone(),
            out_trade_no,
            kind,
            fields,
            sub_mchid,
        })
    }

    async fn close(
        &self,
        http: &reqwest::Client,
        order: OrderRef<'_>,
    ) -> Result<CloseOutcome, ApiError> {
        let no = segment(order.out_trade_no);
        let mchid = &self.verifier.mch_id;
        let (path, body) = match self.sub_mchid(order)? {
            None => (
                format!("/v3/pay/transactions/out-trade-no/{no}/close"),
                serde_json::json!({ "mchid": mchid }),
            ),
            Some(sub) => (
                format!("/v3/pay/partner/transactions/out-trade-no/{no}/close"),
                serde_json::json!({ "sp_mchid": mchid, "sub_mchid": sub }),
            ),
        };
        let body = body.to_string();
        let answer = self
            .call(http, reqwest::Method::POST, &path, Some(body))
            .await?;
        let verified = self.verified_body(&answer.inbound(&self.verifier.name))?;
        // Decided on the signed body, not the (unsigned) status: 204 has none.
        if verified.is_null() && (200..300).contains(&answer.status) {
            return Ok(CloseOutcome::Closed);
        }
        let code = str_or_empty(&verified, "code");
        match code {
            "ORDER_PAID" | "ORDERPAID" | "TRADE_PAID" => Ok(CloseOutcome::AlreadyPaid),
            "ORDER_CLOSED" | "ORDERCLOSED" | "ORDER_NOT_EXIST" => Ok(CloseOutcome::Closed),
            _ => Err(ApiError::Provider(format!(
                "close: HTTP {} {code} {}",
                answer.status,
                str_or_empty(&verified, "message")
            ))),
        }
    }

    fn check_pay(&self, pay: &PayRequest) -> Result<(), PayFieldError> {
        self.check_pay_request(pay)
    }

    async fn place(&self, http: &reqwest::Client, p: &Placement<'_>) -> Result<Placed, ApiError> {
        self.place_order(http, p).await
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
        _answer: &Inbound<'_>,
        _out_refund_no: &str,
    ) -> Result<Notice, Rejection> {
        // WeChat's refund answer only says the refund was taken; its refund notification
        // (verified and settled by the notification path) is what settles it.
        Err(Rejection::Unsupported(
            "a WeChat Pay v3 refund answer settles nothing: its refund notification does".into(),
        ))
    }
}
