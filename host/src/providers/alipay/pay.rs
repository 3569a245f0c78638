//! Placing Alipay payments and starting Alipay refunds, through the one signed gateway
//! request of `api.rs` ([`Api::signed_params`]) and its answer check
//! ([`Api::verified_response`]).
//!
//! - `page` (`alipay.trade.page.pay`, `FAST_INSTANT_TRADE_PAY`) and `wap`
//!   (`alipay.trade.wap.pay`, `QUICK_WAP_WAY`): a signed GET URL
//!   `{api_base}/gateway.do?…` the buyer's browser opens; `app` (`alipay.trade.app.pay`,
//!   `QUICK_MSECURITY_PAY`): the signed order string the Alipay app SDK takes. Nothing is
//!   sent to Alipay for these: the buyer's client sends them, and Alipay checks the
//!   signature then. `precreate` (`alipay.trade.precreate`) is called here and its
//!   verified answer gives the `qr_code`.
//! - The order's lifetime goes as `time_expire`, the absolute time Alipay documents for
//!   all four (`yyyy-MM-dd HH:mm:ss`, China time), rather than the relative
//!   `timeout_express`: it is the same instant whenever the URL is opened.
//! - `alipay.trade.refund`'s answer is final: `code` 10000 means refunded, and
//!   `refund_fee` in it is the total refunded on the trade so far. It becomes a refund
//!   [`Notice`] read by the same [`refund_of`] as a refund notification, so a later refund
//!   notification for the same refund (`out_biz_no` = our `out_request_no`) is the same
//!   refund and changes nothing. The answer is stored and can be verified again
//!   ([`verify_refund_answer`]) from its bytes. (The payments layer then books the fen
//!   the request asked for rather than the running total, `payments::refund::as_requested`,
//!   so two refunds of one order in flight each settle their own amount.)

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::api::{china_now, china_time, text, Api, Request};
use super::{refund_of, RefundFacts};
use crate::providers::api::ApiError;
use crate::providers::pay::{
    PayFieldError, PayRequest, Placed, Placement, RefundStart, RefundStarted,
};
use crate::providers::{Inbound, Notice, ProviderKind, Rejection};

const PRECREATE: &str = "alipay.trade.precreate";
const REFUND: &str = "alipay.trade.refund";

/// Longest `subject` Alipay takes, and longest `return_url`.
const MAX_SUBJECT_CHARS: usize = 256;
const MAX_RETURN_URL_CHARS: usize = 256;

/// How the buyer pays (`pay.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    /// Desktop browser cashier.
    Page,
    /// Mobile browser cashier.
    Wap,
    /// The Alipay app, through the merchant app's SDK.
    App,
    /// A QR code the buyer scans (face-to-face).
    Precreate,
}

impl Method {
    fn parse(s: &str) -> Option<Method> {
        match s {
            "page" => Some(Method::Page),
            "wap" => Some(Method::Wap),
            "app" => Some(Method::App),
            "precreate" => Some(Method::Precreate),
            _ => None,
        }
    }

    /// The API method it places with.
    fn api_method(self) -> &'static str {
        match self {
            Method::Page => "alipay.trade.page.pay",
            Method::Wap => "alipay.trade.wap.pay",
            Method::App => "alipay.trade.app.pay",
            Method::Precreate => PRECREATE,
        }
    }

    /// The `product_code` Alipay documents for it; precreate's is left to Alipay's default
    /// (`FACE_TO_FACE_PAYMENT`), which depends on what the merchant signed.
    fn product_code(self) -> Option<&'static str> {
        match self {
            Method::Page => Some("FAST_INSTANT_TRADE_PAY"),
            Method::Wap => Some("QUICK_WAP_WAY"),
            Method::App => Some("QUICK_MSECURITY_PAY"),
            Method::Precreate => None,
        }
    }

    /// Whether the buyer's browser comes back to the merchant (`return_url`).
    fn returns(self) -> bool {
        matches!(self, Method::Page | Method::Wap)
    }
}

/// Checks `pay` for Alipay: a known method, and only fields Alipay uses, well formed.
fn check(pay: &PayRequest) -> Result<Method, PayFieldError> {
    let method = Method::parse(&pay.method).ok_or_else(|| {
        PayFieldError::new(
            "method",
            format!(
                "`{}` is not an Alipay method: use page, wap, app or precreate",
                pay.method.escape_debug()
            ),
        )
    })?;
    // WeChat buyer ids: sent to Alipay they would mean nothing, and a client sending them
    // has picked the wrong provider.
    for (field, value) in [("openid", &pay.openid), ("sub_openid", &pay.sub_openid)] {
        if value.is_some() {
            return Err(PayFieldError::new(
                field,
                "is a WeChat buyer id; Alipay takes none",
            ));
        }
    }
    if let Some(url) = &pay.return_url {
        if !method.returns() {
            return Err(PayFieldError::new(
                "return_url",
                format!(
                    "only `page` and `wap` send the buyer's browser back; `{}` has no return page",
                    pay.method
                ),
            ));
        }
        check_return_url(url).map_err(|m| PayFieldError::new("return_url", m))?;
    }
    if let Some(d) = &pay.description {
        check_subject(d).map_err(|m| PayFieldError::new("description", m))?;
    }
    Ok(method)
}

/// An absolute http(s) URL Alipay can send the browser to.
fn check_return_url(url: &str) -> Result<(), String> {
    if url.chars().count() > MAX_RETURN_URL_CHARS {
        return Err(format!("must be at most {MAX_RETURN_URL_CHARS} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("`{url}` must be an http:// or https:// URL"));
    }
    Ok(())
}

/// Alipay's `subject`: 1–256 characters, none of the `/`, `=`, `&` it refuses.
fn check_subject(s: &str) -> Result<(), String> {
    let n = s.chars().count();
    if n == 0 || n > MAX_SUBJECT_CHARS {
        return Err(format!("must be 1 to {MAX_SUBJECT_CHARS} characters"));
    }
    if s.chars()
        .any(|c| c.is_control() || matches!(c, '/' | '=' | '&'))
    {
        return Err("must not contain control characters, `/`, `=` or `&` (Alipay refuses them in a subject)".into());
    }
    Ok(())
}

/// Fen as Alipay's yuan with two decimals (`1` → `0.01`), exactly.
pub(super) fn fen_to_yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// The request placing `p` by `method`.
fn placement_request<'a>(p: &Placement<'_>, method: Method) -> Result<Request<'a>, ApiError> {
    if p.total_fee <= 0 {
        return Err(ApiError::Order(format!(
            "total_fee {} is not a positive amount",
            p.total_fee
        )));
    }
    let mut biz = json!({
        "out_trade_no": p.order.out_trade_no,
        "total_amount": fen_to_yuan(p.total_fee),
        "subject": p.description,
    });
    if let Some(code) = method.product_code() {
        biz["product_code"] = code.into();
    }
    if let Some(at) = p.expire_at {
        let at = time::OffsetDateTime::from_unix_timestamp(at.div_euclid(1000))
            .map_err(|e| ApiError::Order(format!("expiry {at} ms is not a time: {e}")))?;
        biz["time_expire"] = china_time(at).into();
    }
    let mut extra = vec![("notify_url", p.notify_url.to_owned())];
    if method.returns() {
        if let Some(url) = &p.pay.return_url {
            extra.push(("return_url", url.clone()));
        }
    }
    Ok(Request {
        method: method.api_method(),
        biz_content: biz,
        extra,
    })
}

/// Places `p` (see the module documentation); the payment JSON: page/wap `{url}`, app
/// `{order_string}`, precreate `{qr_code, out_trade_no}`.
async fn place(api: &Api, http: &reqwest::Client, p: &Placement<'_>) -> Result<Placed, ApiError> {
    let method = check(p.pay).map_err(|e| ApiError::Order(e.to_string()))?;
    let request = placement_request(p, method)?;
    let payment = match method {
        Method::Page | Method::Wap => {
            let query = api.signed_form(&request, &china_now());
            json!({ "url": format!("{}?{query}", api.gateway()) })
        }
        Method::App => json!({ "order_string": api.signed_form(&request, &china_now()) }),
        Method::Precreate => {
            let answer = api.call(http, &request).await?;
            let r = api.verified_response(&answer.body, PRECREATE)?;
            if text(&r, "code") != "10000" {
                return Err(declined(&r));
            }
            let qr_code = text(&r, "qr_code");
            if qr_code.is_empty() {
                return Err(Rejection::Malformed("precreate answer has no qr_code".into()).into());
            }
            let answered_no = text(&r, "out_trade_no");
            if !answered_no.is_empty() && answered_no != p.order.out_trade_no {
                return Err(Rejection::Malformed(format!(
                    "precreate answer is about order `{answered_no}`, not `{}`",
                    p.order.out_trade_no
                ))
                .into());
            }
            json!({ "qr_code": qr_code, "out_trade_no": p.order.out_trade_no })
        }
    };
    Ok(Placed { payment })
}

/// A verified answer refusing the call: Alipay's `sub_code` (or `code`) and `sub_msg`
/// (or `msg`).
fn declined(r: &Value) -> ApiError {
    let pick = |a: &str, b: &str| {
        let v = text(r, a);
        if v.is_empty() {
            text(r, b)
        } else {
            v
        }
    };
    ApiError::Declined {
        provider: ProviderKind::Alipay,
        code: pick("sub_code", "code"),
        message: pick("sub_msg", "msg"),
    }
}

/// Whether a verified error answer leaves the outcome open: Alipay's "service
/// unavailable" (`code` 20000) and `ACQ.SYSTEM_ERROR` ask for the same request again.
fn outcome_unknown(r: &Value) -> bool {
    text(r, "code") == "20000" || text(r, "sub_code") == "ACQ.SYSTEM_ERROR"
}

/// Starts refund `r` with `alipay.trade.refund`; a verified `code` 10000 is the refund
/// done ([`RefundStarted::Settled`]).
async fn refund(
    api: &Api,
    http: &reqwest::Client,
    r: &RefundStart<'_>,
) -> Result<RefundStarted, ApiError> {
    if r.amount <= 0 {
        return Err(ApiError::Order(format!(
            "refund amount {} is not a positive amount",
            r.amount
        )));
    }
    let mut biz = json!({
        "out_trade_no": r.order.out_trade_no,
        "trade_no": r.transaction_id,
        "refund_amount": fen_to_yuan(r.amount),
        "out_request_no": r.out_refund_no,
    });
    if let Some(reason) = r.reason.filter(|s| !s.is_empty()) {
        biz["refund_reason"] = reason.into();
    }
    let answer = api.call(http, &Request::new(REFUND, biz)).await?;
    let resp = api.verified_response(&answer.body, REFUND)?;
    if text(&resp, "code") != "10000" {
        if outcome_unknown(&resp) {
            // Not a refusal: the money may have moved. Leaving the request `requested`
            // (as for no answer) makes sending the same out_refund_no again the way on.
            let code = match text(&resp, "sub_code") {
                s if s.is_empty() => text(&resp, "code"),
                s => s,
            };
            return Err(ApiError::Uncertain {
                provider: ProviderKind::Alipay,
                code,
                message: text(&resp, "sub_msg"),
            });
        }
        return Err(declined(&resp));
    }
    let notice = settled_refund(api, &resp, r.out_refund_no)?;
    if notice.out_trade_no != r.order.out_trade_no {
        return Err(Rejection::Malformed(format!(
            "refund answer is about order `{}`, not `{}`",
            notice.out_trade_no, r.order.out_trade_no
        ))
        .into());
    }
    Ok(RefundStarted::Settled {
        notice: Box::new(notice),
        answer: Box::new(answer),
    })
}

/// Verifies a stored `alipay.trade.refund` answer again (a replay): the refund it
/// reports, for `out_refund_no` (which the answer does not repeat; it is stored beside it).
fn verify_refund_answer(
    api: &Api,
    answer: &Inbound<'_>,
    out_refund_no: &str,
) -> Result<Notice, Rejection> {
    let resp = api.verified_response(answer.body, REFUND)?;
    settled_refund(api, &resp, out_refund_no)
}

/// The refund a verified successful refund answer reports: read once, for the fresh
/// answer and for a stored one alike.
fn settled_refund(api: &Api, resp: &Value, out_refund_no: &str) -> Result<Notice, Rejection> {
    if text(resp, "code") != "10000" {
        return Err(Rejection::Unsupported(format!(
            "{REFUND} answer {} {} is not a refund done",
            text(resp, "code"),
            text(resp, "sub_code")
        )));
    }
    let out_trade_no = text(resp, "out_trade_no");
    if out_trade_no.is_empty() {
        return Err(Rejection::Malformed(
            "refund answer has no out_trade_no".into(),
        ));
    }
    let (trade_no, refund_fee, gmt) = (
        text(resp, "trade_no"),
        text(resp, "refund_fee"),
        text(resp, "gmt_refund_pay"),
    );
    let kind = refund_of(&RefundFacts {
        out_refund_no: ("out_request_no", out_refund_no),
        trade_no: &trade_no,
        refund_fee: &refund_fee,
        total_amount: None,
        refunded_at: &gmt,
    })?;
    let fields: BTreeMap<String, String> = resp
        .as_object()
        .map(|m| m.keys().map(|k| (k.clone(), text(resp, k))).collect())
        .unwrap_or_default();
    Ok(Notice {
        account: api.account_name().to_owned(),
        out_trade_no,
        kind,
        fields,
        sub_mchid: None,
    })
}

/// The trait's entry points (`api.rs` calls these as methods, so the two files do not
/// import each other).
impl Api {
    /// [`check`], for `OrderApi::check_pay`.
    pub(super) fn check_pay_request(&self, pay: &PayRequest) -> Result<(), PayFieldError> {
        check(pay).map(|_| ())
    }

    /// [`place`], for `OrderApi::place`.
    pub(super) async fn place_payment(
        &self,
        http: &reqwest::Client,
        p: &Placement<'_>,
    ) -> Result<Placed, ApiError> {
        place(self, http, p).await
    }

    /// [`refund`], for `OrderApi::refund`.
    pub(super) async fn start_refund(
        &self,
        http: &reqwest::Client,
        r: &RefundStart<'_>,
    ) -> Result<RefundStarted, ApiError> {
        refund(self, http, r).await
    }

    /// [`verify_refund_answer`], for `OrderApi::verify_refund_answer`.
    pub(super) fn verify_stored_refund(
        &self,
        answer: &Inbound<'_>,
        out_refund_no: &str,
    ) -> Result<Notice, Rejection> {
        verify_refund_answer(self, answer, out_refund_no)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::alipay::{parse_form, Account};
    use crate::providers::api::OrderRef;
    use crate::providers::{NoticeKind, RefundAmount};
    use base64::Engine as _;
    use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::signature::{SignatureEncoding, Signer, Verifier};
    use rsa::RsaPrivateKey;
    use sha2::Sha256;
    use std::sync::OnceLock;

    /// Alipay's key, the app's key, a stranger's.
    fn keys() -> &'static [RsaPrivateKey; 3] {
        static KEYS: OnceLock<[RsaPrivateKey; 3]> = OnceLock::new();
        KEYS.get_or_init(|| {
            let mut rng = rand::thread_rng();
            [(); 3].map(|_| RsaPrivateKey::new(&mut rng, 1024).expect("RSA key"))
        })
    }

    fn api() -> Api {
        let k = keys();
        let mut t = toml::Table::new();
        let alipay_pub = k[0]
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        let app = k[1].to_pkcs8_pem(LineEnding::LF).expect("pem");
        for (key, v) in [
            ("provider", "alipay"),
            ("name", "a"),
            ("app_id", "2021000000000001"),
            ("alipay_public_key", alipay_pub.as_str()),
            ("app_private_key", app.as_str()),
            ("api_base", "https://gw.example"),
        ] {
            t.insert(key.into(), v.into());
        }
        let a: crate::config::AccountConfig =
            toml::Value::Table(t).try_into().expect("account config");
        let account = Account::from_config(&a).expect("account");
        Api::from_config(&a, &account).expect("api").expect("key")
    }

    fn pay(method: &str) -> PayRequest {
        PayRequest {
            method: method.into(),
            ..Default::default()
        }
    }

    /// Checks `params` carry a valid app signature, as Alipay does (independently of
    /// `signed_params`: everything but `sign`, sorted, non-empty).
    fn assert_app_signed(params: &BTreeMap<String, String>) {
        let text = params
            .iter()
            .filter(|(k, v)| *k != "sign" && !v.is_empty())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&params["sign"])
            .expect("base64");
        VerifyingKey::<Sha256>::new(keys()[1].to_public_key())
            .verify(
                text.as_bytes(),
                &Signature::try_from(sig.as_slice()).expect("sig"),
            )
            .expect("signed with the app key");
    }

    #[test]
    fn check_names_the_wrong_field() {
        for m in ["page", "wap", "app", "precreate"] {
            assert!(check(&pay(m)).is_ok(), "{m}");
        }
        let field = |p: PayRequest| check(&p).expect_err("refused").field;
        assert_eq!(field(pay("jsapi")), "method");
        assert_eq!(field(pay("")), "method");
        let with_url = |m: &str, u: &str| PayRequest {
            return_url: Some(u.into()),
            ..pay(m)
        };
        assert!(check(&with_url("page", "https://shop.example/done?x=1")).is_ok());
        assert!(check(&with_url("wap", "http://shop.example/")).is_ok());
        for bad in ["ftp://shop.example/", "javascript:alert(1)", "/done", ""] {
            assert_eq!(field(with_url("page", bad)), "return_url", "{bad}");
        }
        assert_eq!(
            field(with_url("app", "https://shop.example/")),
            "return_url"
        );
        assert_eq!(
            field(with_url("precreate", "https://shop.example/")),
            "return_url"
        );
        assert_eq!(
            field(PayRequest {
                openid: Some("o1".into()),
                ..pay("page")
            }),
            "openid"
        );
        for bad in ["a&b", "a=b", "a/b", "", "x\ny"] {
            let p = PayRequest {
                description: Some(bad.into()),
                ..pay("page")
            };
            assert_eq!(field(p), "description", "{bad:?}");
        }
    }

    #[test]
    fn yuan_are_exact() {
        assert_eq!(fen_to_yuan(1), "0.01");
        assert_eq!(fen_to_yuan(10), "0.10");
        assert_eq!(fen_to_yuan(100), "1.00");
        assert_eq!(fen_to_yuan(123_456_789), "1234567.89");
        for fen in [1, 7, 99, 100, 101, 99_999_999_999] {
            assert_eq!(super::super::yuan_to_fen(&fen_to_yuan(fen)), Some(fen));
        }
    }

    fn placement<'a>(pay: &'a PayRequest, expire_at: Option<i64>) -> Placement<'a> {
        Placement {
            order: OrderRef {
                out_trade_no: "P-1",
                sub_mchid: None,
            },
            total_fee: 12_345,
            pay,
            description: "会员 充值",
            notify_url: "https://pay.example/notify/alipay/a",
            expire_at,
        }
    }

    #[tokio::test]
    async fn page_wap_and_app_are_signed_without_calling_alipay() {
        let api = api();
        // No server behind this base: a call would fail the test.
        let http = reqwest::Client::new();
        // 2026-01-01 00:30:00 UTC = 08:30:00 in China.
        let expire = 1_767_227_400_000;
        for (m, code) in [("page", "FAST_INSTANT_TRADE_PAY"), ("wap", "QUICK_WAP_WAY")] {
            let p = PayRequest {
                return_url: Some("https://shop.example/done".into()),
                ..pay(m)
            };
            let placed = place(&api, &http, &placement(&p, Some(expire)))
                .await
                .expect("placed");
            let url = placed.payment["url"].as_str().expect("url");
            let query = url
                .strip_prefix("https://gw.example/gateway.do?")
                .expect("the gateway");
            let params = parse_form(query.as_bytes()).expect("query");
            assert_app_signed(&params);
            assert_eq!(params["method"], format!("alipay.trade.{m}.pay"));
            assert_eq!(params["notify_url"], "https://pay.example/notify/alipay/a");
            assert_eq!(params["return_url"], "https://shop.example/done");
            let biz: Value = serde_json::from_str(&params["biz_content"]).expect("json");
            assert_eq!(biz["out_trade_no"], "P-1");
            assert_eq!(biz["total_amount"], "123.45");
            assert_eq!(biz["subject"], "会员 充值");
            assert_eq!(biz["product_code"], code);
            assert_eq!(biz["time_expire"], "2026-01-01 08:30:00");
        }
        let p = pay("app");
        let placed = place(&api, &http, &placement(&p, None))
            .await
            .expect("placed");
        let order = placed.payment["order_string"].as_str().expect("string");
        let params = parse_form(order.as_bytes()).expect("form");
        assert_app_signed(&params);
        assert_eq!(params["method"], "alipay.trade.app.pay");
        assert!(!params.contains_key("return_url"));
        let biz: Value = serde_json::from_str(&params["biz_content"]).expect("json");
        assert_eq!(biz["product_code"], "QUICK_MSECURITY_PAY");
        assert_eq!(biz.get("time_expire"), None);
    }

    /// A body as Alipay answers, `response` signed by `key`.
    fn answer(response: &str, key: &RsaPrivateKey) -> Vec<u8> {
        let sign = base64::engine::general_purpose::STANDARD.encode(
            SigningKey::<Sha256>::new(key.clone())
                .sign(response.as_bytes())
                .to_bytes(),
        );
        format!(r#"{{"alipay_trade_refund_response":{response},"sign":"{sign}"}}"#).into_bytes()
    }

    fn inbound(body: &[u8]) -> Inbound<'_> {
        Inbound {
            account: Some("a"),
            headers: &[],
            body,
            received_at: 0,
        }
    }

    #[test]
    fn a_refund_answer_reads_as_a_refund_notification_does() {
        let api = api();
        let ok = r#"{"code":"10000","msg":"Success","buyer_logon_id":"159****5620","fund_change":"Y","gmt_refund_pay":"2026-01-02 10:00:00","out_trade_no":"P-1","refund_fee":"30.00","send_back_fee":"30.00","trade_no":"2026T1"}"#;
        let body = answer(ok, &keys()[0]);
        let n = verify_refund_answer(&api, &inbound(&body), "R-1").expect("verifies");
        assert_eq!(n.account, "a");
        assert_eq!(n.out_trade_no, "P-1");
        assert_eq!(n.fields["fund_change"], "Y");
        let NoticeKind::Refunded(r) = n.kind else {
            panic!("a refund: {:?}", n.kind)
        };
        assert_eq!(r.out_refund_no, "R-1");
        assert_eq!(r.transaction_id, "2026T1");
        assert_eq!(r.amount, RefundAmount::Cumulative(3000));
        assert_eq!(r.total_fee, None);
        // 10:00 in China is 02:00 UTC.
        assert_eq!(r.refunded_at, Some(1_767_319_200_000));

        let forged = answer(ok, &keys()[2]);
        let e = verify_refund_answer(&api, &inbound(&forged), "R-1").expect_err("forged");
        assert!(matches!(e, Rejection::BadSignature(_)), "{e}");
        let e = verify_refund_answer(&api, &inbound(&body), "").expect_err("no number");
        assert!(e.to_string().contains("out_request_no"), "{e}");
        let refused = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在"}"#;
        let e = verify_refund_answer(&api, &inbound(&answer(refused, &keys()[0])), "R-1")
            .expect_err("not a refund");
        assert!(matches!(e, Rejection::Unsupported(_)), "{e}");
        let resp: Value = serde_json::from_str(refused).expect("json");
        match declined(&resp) {
            ApiError::Declined { code, message, .. } => {
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    ("ACQ.TRADE_NOT_EXIST", "交易不存在")
                );
            }
            other => panic!("{other}"),
        }
        assert!(!outcome_unknown(&resp));
        let busy: Value = serde_json::from_str(
            r#"{"code":"20000","msg":"Service Currently Unavailable","sub_code":"aop.unknow-error"}"#,
        )
        .expect("json");
        assert!(outcome_unknown(&busy));
    }
}
