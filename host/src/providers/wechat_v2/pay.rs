//! WeChat Pay v2 统一下单 (`POST /pay/unifiedorder`) and 申请退款
//! (`POST /secapi/pay/refund`), with the account's API key both ways.
//!
//! Both go through [`Api::post`] (the XML signed with the API key in the account's sign
//! type, as `orderquery` and `closeorder` are) and [`Api::verified_fields`] (the answer's
//! `return_code`, `sign` and merchant ids) before anything in the answer is used: a
//! `prepay_id` is only as good as the signature around it.
//!
//! `pay.method` → `trade_type`: `jsapi`/`JSAPI` (needs `openid`), `native`/`NATIVE`,
//! `h5`/`MWEB` (needs `client_ip`), `app`/`APP`. What the client gets back is shaped as
//! WeChat documents it for each: `wx.requestPayment` / `WeixinJSBridge` parameters with a
//! `paySign` for JSAPI, `code_url` for NATIVE, `mweb_url` for MWEB, the `PayReq` fields
//! with a `sign` for APP. The client-side signatures are the same v2 signature over those
//! fields, with the same key and the same sign type as the unified order (WeChat requires
//! the two to agree).
//!
//! A refund needs the merchant's API client certificate: WeChat only takes
//! `secapi/pay/refund` over mutual TLS. The account's own client presents it
//! ([`super::tls`]); without one the refund is refused before anything is sent. WeChat's
//! answer only says the refund was accepted; its refund notification (退款结果通知)
//! settles it through the existing refund path.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::json;

use super::api::Api;
use super::sign;
use crate::providers::api::{nonce, ApiError};
use crate::providers::pay::{
    PayFieldError, PayRequest, Placed, Placement, RefundStart, RefundStarted,
};
use crate::providers::{ProviderKind, Rejection};
use crate::time::Millis;

/// The unified order API (统一下单).
pub(super) const UNIFIEDORDER: &str = "/pay/unifiedorder";

/// The refund API (申请退款), mutual TLS only.
pub(super) const REFUND: &str = "/secapi/pay/refund";

/// `spbill_create_ip` when the request gives no `client_ip` (JSAPI, NATIVE, APP).
///
/// WeChat wants the buyer's IP for JSAPI and APP and the calling machine's for NATIVE,
/// and checks it only for MWEB (H5), where it must be the address the buyer's browser
/// opens `mweb_url` from: that one is required here. For the others, a host behind NAT
/// or a proxy does not know either address; loopback is what the CloudPay flow this host
/// replaces sends (`spbillCreateIp: "127.0.0.1"`) and WeChat takes it. Give `client_ip`
/// whenever the merchant's front end knows it: WeChat's risk control uses it.
pub const DEFAULT_SPBILL_CREATE_IP: &str = "127.0.0.1";

/// WeChat's limit on `body` (String(128)) and `openid` (String(128)).
const MAX_TEXT_CHARS: usize = 128;

/// Longest `wap_name` put in MWEB's `scene_info` (String(256) in all).
const MAX_WAP_NAME_CHARS: usize = 32;

/// A v2 `trade_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TradeType {
    /// In WeChat (official account, mini program): `wx.requestPayment` / `WeixinJSBridge`.
    Jsapi,
    /// A QR code the buyer scans (`code_url`).
    Native,
    /// A mobile browser outside WeChat (`mweb_url`), H5 payment.
    Mweb,
    /// A native app with the WeChat SDK (`PayReq`).
    App,
}

impl TradeType {
    /// The `pay.method` names: the lower-case ones and WeChat's own.
    fn parse(method: &str) -> Option<TradeType> {
        match method {
            "jsapi" | "JSAPI" => Some(TradeType::Jsapi),
            "native" | "NATIVE" => Some(TradeType::Native),
            "h5" | "MWEB" => Some(TradeType::Mweb),
            "app" | "APP" => Some(TradeType::App),
            _ => None,
        }
    }

    /// WeChat's `trade_type`.
    fn as_str(self) -> &'static str {
        match self {
            TradeType::Jsapi => "JSAPI",
            TradeType::Native => "NATIVE",
            TradeType::Mweb => "MWEB",
            TradeType::App => "APP",
        }
    }
}

/// Refuses text WeChat would refuse or that cannot travel in its XML: control characters
/// (not allowed in XML), more than `max` characters.
fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), PayFieldError> {
    if value.chars().any(char::is_control) {
        return Err(PayFieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    if value.chars().count() > max {
        return Err(PayFieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Checks a `pay` request for a v2 account: the method is one of WeChat's, the fields it
/// needs are there and well-formed. Nothing is sent.
pub(super) fn check(pay: &PayRequest) -> Result<TradeType, PayFieldError> {
    let trade_type = TradeType::parse(&pay.method).ok_or_else(|| {
        PayFieldError::new(
            "method",
            format!(
                "`{}` is not a WeChat Pay v2 method: use jsapi (JSAPI), native (NATIVE), h5 (MWEB) or app (APP)",
                pay.method
            ),
        )
    })?;
    if pay.sub_openid.is_some() {
        return Err(PayFieldError::new(
            "sub_openid",
            "is for WeChat Pay v3 partner accounts; a v2 account takes `openid`",
        ));
    }
    let openid = pay.openid.as_deref().filter(|s| !s.is_empty());
    match openid {
        Some(o) => check_text("openid", o, MAX_TEXT_CHARS)?,
        None if trade_type == TradeType::Jsapi => {
            return Err(PayFieldError::new(
                "openid",
                "is required for jsapi: the buyer's openid under the account's appid",
            ))
        }
        None => {}
    }
    match pay.client_ip.as_deref() {
        Some(ip) if ip.parse::<IpAddr>().is_err() => {
            return Err(PayFieldError::new(
                "client_ip",
                format!("`{ip}` is not an IPv4 or IPv6 address"),
            ))
        }
        None if trade_type == TradeType::Mweb => {
            return Err(PayFieldError::new(
                "client_ip",
                "is required for h5 (MWEB): WeChat checks it against the address the buyer's browser pays from",
            ))
        }
        _ => {}
    }
    if let Some(d) = &pay.description {
        check_text("description", d, MAX_TEXT_CHARS)?;
    }
    if let Some(url) = &pay.return_url {
        if trade_type != TradeType::Mweb {
            return Err(PayFieldError::new(
                "return_url",
                "is only used by h5 (MWEB), appended to mweb_url as redirect_url",
            ));
        }
        let ok = reqwest::Url::parse(url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !ok {
            return Err(PayFieldError::new(
                "return_url",
                format!("`{url}` is not an http(s) URL"),
            ));
        }
    }
    Ok(trade_type)
}

/// Unix ms → `yyyyMMddHHmmss` in China Standard Time (`time_expire`).
fn china_time(ms: Millis) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let cst = time::UtcOffset::from_hms(8, 0, 0).ok()?;
    at.to_offset(cst)
        .format(time::macros::format_description!(
            "[year][month][day][hour][minute][second]"
        ))
        .ok()
}

/// `scheme://host[:port]` of an http(s) URL.
fn origin(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    u.has_host().then(|| u.origin().ascii_serialization())
}

/// MWEB's `scene_info`: a WAP site (`h5_info.type` `Wap`), named by the page the buyer
/// returns to (`return_url`) or else this host's public address, and the description.
fn mweb_scene_info(p: &Placement<'_>) -> String {
    let wap_url = p
        .pay
        .return_url
        .as_deref()
        .and_then(origin)
        .or_else(|| origin(p.notify_url))
        .unwrap_or_default();
    let wap_name: String = p.description.chars().take(MAX_WAP_NAME_CHARS).collect();
    json!({ "h5_info": { "type": "Wap", "wap_url": wap_url, "wap_name": wap_name } }).to_string()
}

/// A verified answer's field, or "".
fn get<'a>(fields: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    fields.get(k).map(String::as_str).unwrap_or("")
}

/// A verified answer with `result_code` `FAIL`: WeChat's refusal, with its code and text.
fn declined(fields: &BTreeMap<String, String>) -> ApiError {
    let code = get(fields, "err_code").to_owned();
    let message = get(fields, "err_code_des").to_owned();
    // WeChat's "system error, call again with the same parameters": the refund (or
    // order) may have been taken. Treated as a refusal, a refund's amount would be
    // freed and a second refund could go through beside the first.
    if UNCERTAIN.contains(&code.as_str()) {
        return ApiError::Uncertain {
            provider: ProviderKind::WechatV2,
            code,
            message,
        };
    }
    ApiError::Declined {
        provider: ProviderKind::WechatV2,
        code,
        message,
    }
}

/// `err_code`s after which WeChat asks for the same call again: the outcome is unknown.
const UNCERTAIN: [&str; 2] = ["SYSTEMERROR", "BIZERR_NEED_RETRY"];

/// What a verified answer's `result_code` says: `Ok` for `SUCCESS`, WeChat's refusal for
/// `FAIL`, anything else refused as unreadable.
fn result(fields: &BTreeMap<String, String>, what: &str) -> Result<(), ApiError> {
    match get(fields, "result_code") {
        "SUCCESS" => Ok(()),
        "FAIL" => Err(declined(fields)),
        other => Err(ApiError::Refused(Rejection::Malformed(format!(
            "{what}: result_code `{other}` is neither SUCCESS nor FAIL"
        )))),
    }
}

impl Api {
    /// [`check`] for the trait.
    pub(super) fn check_pay_request(&self, pay: &PayRequest) -> Result<(), PayFieldError> {
        check(pay).map(|_| ())
    }

    /// Places the order with `pay/unifiedorder` and builds, from the verified answer, what
    /// the client needs.
    pub(super) async fn unified_order(
        &self,
        http: &reqwest::Client,
        p: &Placement<'_>,
    ) -> Result<Placed, ApiError> {
        // check_pay ran before; checked again so that nothing unchecked is ever sent.
        let trade_type = check(p.pay).map_err(|e| ApiError::Order(e.to_string()))?;
        let mut f = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            f.insert(k.to_owned(), v);
        };
        put("body", p.description.to_owned());
        put("out_trade_no", p.order.out_trade_no.to_owned());
        put("total_fee", p.total_fee.to_string());
        put(
            "spbill_create_ip",
            p.pay
                .client_ip
                .clone()
                .unwrap_or_else(|| DEFAULT_SPBILL_CREATE_IP.to_owned()),
        );
        put("notify_url", p.notify_url.to_owned());
        put("trade_type", trade_type.as_str().to_owned());
        if trade_type == TradeType::Jsapi {
            put("openid", p.pay.openid.clone().unwrap_or_default());
        }
        if let Some(at) = p.expire_at {
            let text = china_time(at)
                .ok_or_else(|| ApiError::Order(format!("expiry {at} ms is out of range")))?;
            put("time_expire", text);
        }
        if trade_type == TradeType::Mweb {
            put("scene_info", mweb_scene_info(p));
        }
        let http = self.http(http);
        let answer = self.post(http, UNIFIEDORDER, f).await?;
        let fields = self.verified_fields(&answer.body)?;
        result(&fields, "unifiedorder")?;
        let malformed = |m: String| ApiError::Refused(Rejection::Malformed(m));
        let prepay_id = get(&fields, "prepay_id");
        if prepay_id.is_empty() {
            return Err(malformed("unifiedorder answer has no prepay_id".into()));
        }
        let payment = match trade_type {
            TradeType::Jsapi => self.jsapi_params(prepay_id),
            TradeType::App => self.app_params(prepay_id),
            TradeType::Native => {
                let code_url = get(&fields, "code_url");
                if code_url.is_empty() {
                    return Err(malformed("NATIVE answer has no code_url".into()));
                }
                json!({ "code_url": code_url })
            }
            TradeType::Mweb => {
                let mweb_url = get(&fields, "mweb_url");
                if mweb_url.is_empty() {
                    return Err(malformed("MWEB answer has no mweb_url".into()));
                }
                json!({ "mweb_url": with_redirect(mweb_url, p.pay.return_url.as_deref()) })
            }
        };
        Ok(Placed { payment })
    }

    /// The JSAPI client parameters (`wx.requestPayment`, `WeixinJSBridge getBrandWCPayRequest`):
    /// `paySign` is the v2 signature over `appId`, `timeStamp`, `nonceStr`, `package` and
    /// `signType`, with the API key.
    fn jsapi_params(&self, prepay_id: &str) -> serde_json::Value {
        let mut f = BTreeMap::new();
        f.insert("appId".to_owned(), self.account.appid.clone());
        f.insert("timeStamp".to_owned(), unix_seconds());
        f.insert("nonceStr".to_owned(), nonce());
        f.insert("package".to_owned(), format!("prepay_id={prepay_id}"));
        f.insert("signType".to_owned(), self.sign_type.as_str().to_owned());
        let pay_sign = sign(&f, &self.account.api_key, self.sign_type);
        let mut v = json!(f);
        v["paySign"] = pay_sign.into();
        v
    }

    /// The APP client parameters (the SDK's `PayReq`): `sign` is the v2 signature over
    /// `appid`, `partnerid`, `prepayid`, `package` (`Sign=WXPay`), `noncestr` and
    /// `timestamp`, with the API key.
    fn app_params(&self, prepay_id: &str) -> serde_json::Value {
        let mut f = BTreeMap::new();
        f.insert("appid".to_owned(), self.account.appid.clone());
        f.insert("partnerid".to_owned(), self.account.mch_id.clone());
        f.insert("prepayid".to_owned(), prepay_id.to_owned());
        f.insert("package".to_owned(), "Sign=WXPay".to_owned());
        f.insert("noncestr".to_owned(), nonce());
        f.insert("timestamp".to_owned(), unix_seconds());
        let s = sign(&f, &self.account.api_key, self.sign_type);
        let mut v = json!(f);
        v["sign"] = s.into();
        v
    }

    /// Why the account cannot start refunds: no client certificate.
    pub(super) fn no_client_cert(&self) -> String {
        format!(
            "wechat-v2 account `{}` has no merchant API client certificate: WeChat takes \
             refunds (secapi/pay/refund) over mutual TLS only; set `client_cert_file` and \
             `client_key_file` (apiclient_cert.pem, apiclient_key.pem) on the account",
            self.account.name
        )
    }

    /// Starts a refund with `secapi/pay/refund` over mutual TLS: accepted (WeChat's refund
    /// notification settles it later) or declined, from the verified answer.
    pub(super) async fn start_refund(
        &self,
        r: &RefundStart<'_>,
    ) -> Result<RefundStarted, ApiError> {
        let Some(http) = self.client_cert_http() else {
            return Err(ApiError::Order(self.no_client_cert()));
        };
        let mut f = BTreeMap::new();
        f.insert("transaction_id".to_owned(), r.transaction_id.to_owned());
        f.insert("out_refund_no".to_owned(), r.out_refund_no.to_owned());
        f.insert("total_fee".to_owned(), r.total_fee.to_string());
        f.insert("refund_fee".to_owned(), r.amount.to_string());
        if let Some(reason) = r.reason {
            f.insert("refund_desc".to_owned(), reason.to_owned());
        }
        if let Some(url) = r.notify_url {
            f.insert("notify_url".to_owned(), url.to_owned());
        }
        let answer = self.post(http, REFUND, f).await?;
        let fields = self.verified_fields(&answer.body)?;
        result(&fields, "refund")?;
        // A verified answer about another refund is not an answer to this one.
        let malformed = |m: String| ApiError::Refused(Rejection::Malformed(m));
        for (k, ours) in [
            ("out_refund_no", r.out_refund_no.to_owned()),
            ("refund_fee", r.amount.to_string()),
        ] {
            let theirs = get(&fields, k);
            if !theirs.is_empty() && theirs != ours {
                return Err(malformed(format!(
                    "refund answer's {k} `{theirs}` is not the request's `{ours}`"
                )));
            }
        }
        Ok(RefundStarted::Accepted {
            refund_id: get(&fields, "refund_id").to_owned(),
            // WeChat has taken the request; the money moves when its notification says so.
            state: "PROCESSING".to_owned(),
        })
    }
}

/// `mweb_url` with the page the buyer returns to (`redirect_url`, URL-encoded, as WeChat's
/// H5 guide says), when there is one.
fn with_redirect(mweb_url: &str, return_url: Option<&str>) -> String {
    match return_url {
        None => mweb_url.to_owned(),
        Some(url) => {
            let sep = if mweb_url.contains('?') { '&' } else { '?' };
            let encoded: String = form_urlencoded::byte_serialize(url.as_bytes()).collect();
            format!("{mweb_url}{sep}redirect_url={encoded}")
        }
    }
}

/// Seconds since the epoch, as the client parameters' time stamps are.
fn unix_seconds() -> String {
    (crate::time::now_ms() / 1000).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pay(method: &str) -> PayRequest {
        PayRequest {
            method: method.into(),
            ..PayRequest::default()
        }
    }

    #[test]
    fn methods_map_to_trade_types_and_name_the_fields_they_need() {
        let with = |method: &str, openid: Option<&str>, ip: Option<&str>| PayRequest {
            method: method.into(),
            openid: openid.map(Into::into),
            client_ip: ip.map(Into::into),
            ..PayRequest::default()
        };
        for (m, t) in [
            ("native", TradeType::Native),
            ("NATIVE", TradeType::Native),
            ("app", TradeType::App),
            ("APP", TradeType::App),
        ] {
            assert_eq!(check(&pay(m)), Ok(t));
        }
        assert_eq!(
            check(&with("jsapi", Some("o1"), None)),
            Ok(TradeType::Jsapi)
        );
        assert_eq!(
            check(&with("JSAPI", Some("o1"), None)),
            Ok(TradeType::Jsapi)
        );
        assert_eq!(
            check(&with("h5", None, Some("1.2.3.4"))),
            Ok(TradeType::Mweb)
        );
        assert_eq!(check(&with("MWEB", None, Some("::1"))), Ok(TradeType::Mweb));
        let field = |p: PayRequest| check(&p).expect_err("refused").field;
        assert_eq!(field(pay("bank")), "method");
        assert_eq!(field(pay("Jsapi")), "method");
        assert_eq!(field(with("jsapi", None, None)), "openid");
        assert_eq!(field(with("jsapi", Some(""), None)), "openid");
        assert_eq!(field(with("h5", None, None)), "client_ip");
        assert_eq!(field(with("native", None, Some("localhost"))), "client_ip");
        let mut p = pay("native");
        p.sub_openid = Some("x".into());
        assert_eq!(field(p), "sub_openid");
        let mut p = pay("native");
        p.description = Some("a\u{0}b".into());
        assert_eq!(field(p), "description");
        let mut p = pay("native");
        p.description = Some("元".repeat(129));
        assert_eq!(field(p), "description");
        let mut p = pay("native");
        p.return_url = Some("https://shop.example/back".into());
        assert_eq!(field(p), "return_url");
        let mut p = with("h5", None, Some("1.2.3.4"));
        p.return_url = Some("javascript:alert(1)".into());
        assert_eq!(field(p), "return_url");
        let mut p = with("h5", None, Some("1.2.3.4"));
        p.return_url = Some("https://shop.example/back?a=1".into());
        assert!(check(&p).is_ok());
    }

    #[test]
    fn expiry_is_china_time() {
        // 2026-09-03 05:15:40 UTC is 13:15:40 in Beijing.
        let ms = 1_788_412_540_000;
        assert_eq!(china_time(ms).as_deref(), Some("20260903131540"));
        assert_eq!(super::super::parse_time_end("20260903131540"), Some(ms));
    }

    #[test]
    fn h5_redirect_url_is_appended_encoded() {
        assert_eq!(
            with_redirect(
                "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx1&package=2",
                Some("https://shop.example/back?o=1&x=y")
            ),
            "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx1&package=2\
             &redirect_url=https%3A%2F%2Fshop.example%2Fback%3Fo%3D1%26x%3Dy"
        );
        assert_eq!(with_redirect("https://x/y", None), "https://x/y");
        assert_eq!(
            with_redirect("https://x/y", Some("https://a/")),
            "https://x/y?redirect_url=https%3A%2F%2Fa%2F"
        );
    }
}
