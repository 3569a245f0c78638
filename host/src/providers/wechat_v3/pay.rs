//! WeChat Pay v3: placing a payment and starting a refund, for direct and partner (服务商)
//! accounts.
//!
//! - Placing: `POST /v3/pay/transactions/{jsapi|native|h5|app}` (partner:
//!   `/v3/pay/partner/transactions/{method}`, naming `sp_appid`, `sp_mchid`, the order's
//!   `sub_mchid` and the sub-merchant's `sub_appid` when one is configured). The verified
//!   answer's `prepay_id` / `code_url` / `h5_url` becomes what the client needs: for JSAPI
//!   the `wx.requestPayment` parameters and for APP the SDK's `PayReq`, each signed with
//!   the merchant API key ([`Api::client_sign`], the one place client parameters are
//!   signed).
//! - Refunding: `POST /v3/refund/domestic/refunds`. WeChat accepts (`PROCESSING`, or
//!   `SUCCESS` at once) and confirms by its refund notification, which the notification
//!   path settles; the answer itself settles nothing.
//!
//! Requests are signed and answers verified by the order API's own code
//! ([`Api::call`], [`Api::verified_body`]): an error answer (`{"code","message"}`) is
//! believed only once its signature verifies, and then becomes [`ApiError::Declined`]
//! with WeChat's code and message.

use serde_json::{json, Map, Value};

use super::api::Api;
use super::Mode;
use crate::providers::api::{nonce, ApiError, ProviderAnswer};
use crate::providers::json::str_or_empty;
use crate::providers::pay::{
    PayFieldError, PayRequest, Placed, Placement, RefundStart, RefundStarted,
};
use crate::providers::{ProviderKind, Rejection};
use crate::time::Millis;

/// The ways to pay WeChat Pay v3 takes, as `pay.method` names them.
pub const METHODS: [&str; 4] = ["jsapi", "native", "h5", "app"];

/// WeChat's limit on `description` (characters).
const MAX_DESCRIPTION_CHARS: usize = 127;

/// WeChat's limit on an openid (bytes).
const MAX_OPENID_BYTES: usize = 128;

/// The refund states of a refund answer that mean WeChat took the refund.
const REFUND_TAKEN: [&str; 2] = ["SUCCESS", "PROCESSING"];

/// The refund states of a refund answer that mean it will not happen.
const REFUND_REFUSED: [&str; 2] = ["ABNORMAL", "CLOSED"];

/// A `pay.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// In WeChat (公众号 / 小程序): `wx.requestPayment` with signed parameters.
    Jsapi,
    /// A QR code (`code_url`) to scan.
    Native,
    /// A mobile browser outside WeChat: `h5_url` to open.
    H5,
    /// A native app through the WeChat SDK: signed `PayReq` parameters.
    App,
}

impl Method {
    fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "jsapi" => Method::Jsapi,
            "native" => Method::Native,
            "h5" => Method::H5,
            "app" => Method::App,
            _ => return None,
        })
    }

    /// The last segment of the transactions path.
    fn segment(self) -> &'static str {
        match self {
            Method::Jsapi => "jsapi",
            Method::Native => "native",
            Method::H5 => "h5",
            Method::App => "app",
        }
    }
}

/// A placement as it is sent: where, what, and the ids the client parameters name.
#[derive(Debug, Clone, PartialEq)]
struct OrderRequest {
    method: Method,
    /// Path of the transactions endpoint.
    path: String,
    /// The JSON body.
    body: Value,
    /// The app the buyer pays in (`appId` / `appid` of the client parameters).
    client_appid: String,
    /// The merchant the APP parameters name (`partnerid`): the merchant, or for a partner
    /// account the sub-merchant.
    partnerid: String,
}

/// `expire_at` (unix ms) as WeChat's `time_expire`: RFC 3339 in China time, whole
/// seconds (`2026-01-01T08:30:00+08:00`).
fn time_expire(expire_at: Millis) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(expire_at.div_euclid(1000))
        .ok()?
        .to_offset(time::macros::offset!(+8));
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// A verified error answer (`{"code","message"}`, or none) as the refusal it is.
fn declined(status: u16, verified: &Value) -> ApiError {
    let code = match str_or_empty(verified, "code") {
        "" => format!("HTTP_{status}"),
        c => c.to_owned(),
    };
    let message = str_or_empty(verified, "message").to_owned();
    // WeChat's system errors (HTTP 5xx, `SYSTEM_ERROR`) say "call again with the same
    // parameters": the refund may have been taken, so it is not a refusal.
    if status >= 500 || code == "SYSTEM_ERROR" {
        return ApiError::Uncertain {
            provider: ProviderKind::WechatV3,
            code,
            message,
        };
    }
    ApiError::Declined {
        provider: ProviderKind::WechatV3,
        code,
        message,
    }
}

/// A non-empty string field of a verified answer, or why the answer cannot be used.
fn required<'v>(verified: &'v Value, key: &str) -> Result<&'v str, ApiError> {
    match str_or_empty(verified, key) {
        "" => Err(ApiError::Refused(Rejection::Malformed(format!(
            "the answer has no `{key}`"
        )))),
        v => Ok(v),
    }
}

/// An openid field: present when `needed`, and of a plausible size when present.
fn check_openid(
    field: &'static str,
    value: Option<&str>,
    needed: bool,
) -> Result<(), PayFieldError> {
    match value {
        None if needed => Err(PayFieldError::new(
            field,
            "jsapi needs the buyer's openid (under the appid the payment is made in)",
        )),
        Some(v) if v.is_empty() || v.len() > MAX_OPENID_BYTES => Err(PayFieldError::new(
            field,
            format!("must be 1 to {MAX_OPENID_BYTES} characters"),
        )),
        _ => Ok(()),
    }
}

impl Api {
    /// Checks `pay` before anything is sent: a known method, and the fields it needs.
    pub(super) fn check_pay_request(&self, pay: &PayRequest) -> Result<(), PayFieldError> {
        let Some(method) = Method::parse(&pay.method) else {
            return Err(PayFieldError::new(
                "method",
                format!(
                    "unknown method `{}` for wechat-v3: use one of {}",
                    pay.method,
                    METHODS.join(", ")
                ),
            ));
        };
        let partner = matches!(self.mode, Mode::Partner(_));
        if pay.sub_openid.is_some() && !partner {
            return Err(PayFieldError::new(
                "sub_openid",
                "only a partner (服务商) account's payment has a sub_openid: give `openid`",
            ));
        }
        if method == Method::Jsapi {
            if pay.openid.is_some() && pay.sub_openid.is_some() {
                return Err(PayFieldError::new(
                    "sub_openid",
                    "give `openid` (under the service provider's appid) or `sub_openid` (under the sub-merchant's), not both",
                ));
            }
            check_openid("openid", pay.openid.as_deref(), pay.sub_openid.is_none())?;
            check_openid("sub_openid", pay.sub_openid.as_deref(), false)?;
        }
        match pay.client_ip.as_deref() {
            None if method == Method::H5 => {
                return Err(PayFieldError::new(
                    "client_ip",
                    "h5 needs the buyer's IP address (WeChat checks it against the browser's)",
                ))
            }
            Some(ip) if ip.parse::<std::net::IpAddr>().is_err() => {
                return Err(PayFieldError::new(
                    "client_ip",
                    format!("`{ip}` is not an IPv4 or IPv6 address"),
                ))
            }
            _ => {}
        }
        if let Some(d) = &pay.description {
            if d.is_empty() || d.chars().count() > MAX_DESCRIPTION_CHARS {
                return Err(PayFieldError::new(
                    "description",
                    format!("must be 1 to {MAX_DESCRIPTION_CHARS} characters"),
                ));
            }
        }
        Ok(())
    }

    /// What placing `p` sends.
    fn order_request(&self, p: &Placement<'_>) -> Result<OrderRequest, ApiError> {
        let pay = p.pay;
        let method = Method::parse(&pay.method).ok_or_else(|| {
            // `check_pay` ran first; this is a caller that skipped it.
            ApiError::Order(format!("unknown method `{}`", pay.method))
        })?;
        let sub = self.sub_mchid(p.order)?;
        let mut body = Map::new();
        let (path, client_appid, partnerid) = match sub {
            None => {
                body.insert("appid".into(), self.verifier.appid.clone().into());
                body.insert("mchid".into(), self.verifier.mch_id.clone().into());
                (
                    format!("/v3/pay/transactions/{}", method.segment()),
                    self.verifier.appid.clone(),
                    self.verifier.mch_id.clone(),
                )
            }
            Some(sub) => {
                let sub_appid = self.mode.sub_appid(sub);
                body.insert("sp_appid".into(), self.verifier.appid.clone().into());
                body.insert("sp_mchid".into(), self.verifier.mch_id.clone().into());
                if let Some(app) = sub_appid {
                    body.insert("sub_appid".into(), app.into());
                }
                body.insert("sub_mchid".into(), sub.into());
                // The buyer pays in the sub-merchant's app when it paid with a sub_openid
                // (JSAPI) or when the sub-merchant has an app (APP); else in the service
                // provider's.
                let in_sub_app = match method {
                    Method::Jsapi => pay.sub_openid.is_some(),
                    _ => sub_appid.is_some(),
                };
                let client_appid = if in_sub_app {
                    sub_appid.ok_or_else(|| {
                        ApiError::Order(format!(
                            "pay.sub_openid: sub-merchant {sub} has no `sub_appid` configured on account `{}`, which WeChat needs with a sub_openid",
                            self.verifier.name
                        ))
                    })?
                } else {
                    self.verifier.appid.as_str()
                };
                (
                    format!("/v3/pay/partner/transactions/{}", method.segment()),
                    client_appid.to_owned(),
                    sub.to_owned(),
                )
            }
        };
        body.insert("description".into(), p.description.into());
        body.insert("out_trade_no".into(), p.order.out_trade_no.into());
        if let Some(at) = p.expire_at {
            let t = time_expire(at)
                .ok_or_else(|| ApiError::Order(format!("expiry {at} is not a date")))?;
            body.insert("time_expire".into(), t.into());
        }
        body.insert("notify_url".into(), p.notify_url.into());
        body.insert(
            "amount".into(),
            json!({ "total": p.total_fee, "currency": "CNY" }),
        );
        if method == Method::Jsapi {
            let payer = match (sub, &pay.openid, &pay.sub_openid) {
                (None, Some(openid), _) => json!({ "openid": openid }),
                (Some(_), _, Some(sub_openid)) => json!({ "sub_openid": sub_openid }),
                (Some(_), Some(openid), None) => json!({ "sp_openid": openid }),
                _ => {
                    return Err(ApiError::Order(
                        "pay.openid: jsapi needs the buyer's openid".into(),
                    ))
                }
            };
            body.insert("payer".into(), payer);
        }
        if let Some(ip) = &pay.client_ip {
            let mut scene = json!({ "payer_client_ip": ip });
            if method == Method::H5 {
                scene["h5_info"] = json!({ "type": "Wap" });
            }
            body.insert("scene_info".into(), scene);
        }
        Ok(OrderRequest {
            method,
            path,
            body: Value::Object(body),
            client_appid,
            partnerid,
        })
    }

    /// Places `p` and returns, from the verified answer, what the client needs to pay.
    pub(super) async fn place_order(
        &self,
        http: &reqwest::Client,
        p: &Placement<'_>,
    ) -> Result<Placed, ApiError> {
        let req = self.order_request(p)?;
        let answer = self
            .call(
                http,
                reqwest::Method::POST,
                &req.path,
                Some(req.body.to_string()),
            )
            .await?;
        self.read_place_answer(&req, &answer)
    }

    /// The client parameters from a placement's answer, once it verifies.
    fn read_place_answer(
        &self,
        req: &OrderRequest,
        answer: &ProviderAnswer,
    ) -> Result<Placed, ApiError> {
        let verified = self.verified_body(&answer.inbound(&self.verifier.name))?;
        if !(200..300).contains(&answer.status) {
            return Err(declined(answer.status, &verified));
        }
        let timestamp = (crate::time::now_ms() / 1000).to_string();
        let nonce = nonce();
        let payment = match req.method {
            Method::Jsapi => {
                let package = format!("prepay_id={}", required(&verified, "prepay_id")?);
                let pay_sign = self.client_sign(&[&req.client_appid, &timestamp, &nonce, &package]);
                json!({
                    "appId": req.client_appid,
                    "timeStamp": timestamp,
                    "nonceStr": nonce,
                    "package": package,
                    "signType": "RSA",
                    "paySign": pay_sign,
                })
            }
            Method::App => {
                let prepay_id = required(&verified, "prepay_id")?;
                let sign = self.client_sign(&[&req.client_appid, &timestamp, &nonce, prepay_id]);
                json!({
                    "appid": req.client_appid,
                    "partnerid": req.partnerid,
                    "prepayid": prepay_id,
                    "package": "Sign=WXPay",
                    "noncestr": nonce,
                    "timestamp": timestamp,
                    "sign": sign,
                })
            }
            Method::Native => json!({ "code_url": required(&verified, "code_url")? }),
            Method::H5 => json!({ "h5_url": required(&verified, "h5_url")? }),
        };
        Ok(Placed { payment })
    }

    /// The signature of client payment parameters (JSAPI `paySign`, APP `sign`): each
    /// line followed by `\n`, SHA256withRSA with the merchant API key, base64, as WeChat
    /// documents for both.
    fn client_sign(&self, lines: &[&str]) -> String {
        let message: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.client.sign(message.as_bytes())
    }

    /// What starting `r` sends: the path and the JSON body.
    fn refund_request(&self, r: &RefundStart<'_>) -> Result<(&'static str, Value), ApiError> {
        let mut body = Map::new();
        if let Some(sub) = self.sub_mchid(r.order)? {
            body.insert("sub_mchid".into(), sub.into());
        }
        body.insert("transaction_id".into(), r.transaction_id.into());
        body.insert("out_refund_no".into(), r.out_refund_no.into());
        if let Some(reason) = r.reason {
            body.insert("reason".into(), reason.into());
        }
        if let Some(url) = r.notify_url {
            body.insert("notify_url".into(), url.into());
        }
        body.insert(
            "amount".into(),
            json!({ "refund": r.amount, "total": r.total_fee, "currency": "CNY" }),
        );
        Ok(("/v3/refund/domestic/refunds", Value::Object(body)))
    }

    /// Starts refund `r`; its refund notification settles it later.
    pub(super) async fn start_refund(
        &self,
        http: &reqwest::Client,
        r: &RefundStart<'_>,
    ) -> Result<RefundStarted, ApiError> {
        let (path, body) = self.refund_request(r)?;
        let answer = self
            .call(http, reqwest::Method::POST, path, Some(body.to_string()))
            .await?;
        self.read_refund_answer(r, &answer)
    }

    /// What a refund answer says, once it verifies and is about refund `r`.
    fn read_refund_answer(
        &self,
        r: &RefundStart<'_>,
        answer: &ProviderAnswer,
    ) -> Result<RefundStarted, ApiError> {
        let verified = self.verified_body(&answer.inbound(&self.verifier.name))?;
        if !(200..300).contains(&answer.status) {
            return Err(declined(answer.status, &verified));
        }
        let malformed = |m: String| Err(ApiError::Refused(Rejection::Malformed(m)));
        let about = str_or_empty(&verified, "out_refund_no");
        if about != r.out_refund_no {
            return malformed(format!(
                "the answer is about refund `{about}`, not `{}`",
                r.out_refund_no
            ));
        }
        let refund = super::fen(&verified, "refund")?;
        if refund != r.amount {
            return malformed(format!(
                "the answer refunds {refund} fen, not the {} asked",
                r.amount
            ));
        }
        let status = required(&verified, "status")?;
        if REFUND_REFUSED.contains(&status) {
            return Err(ApiError::Declined {
                provider: ProviderKind::WechatV3,
                code: status.to_owned(),
                message: format!("refund {} is {status}", r.out_refund_no),
            });
        }
        if !REFUND_TAKEN.contains(&status) {
            return malformed(format!("unknown refund status `{status}`"));
        }
        Ok(RefundStarted::Accepted {
            refund_id: str_or_empty(&verified, "refund_id").to_owned(),
            state: status.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
