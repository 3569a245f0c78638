//! A stand-in of Alipay's gateway (`POST /gateway.do`) for placing payments and refunds:
//! `alipay.trade.precreate`, `alipay.trade.refund`, and `alipay.trade.close` /
//! `alipay.trade.query` for the orders it knows.
//!
//! Written from Alipay's documentation, independently of the host. Every request is
//! checked as Alipay does: the common parameters (`app_id`, `charset` utf-8, `sign_type`
//! RSA2, `version` 1.0, a `timestamp` within ten minutes of now in China time), in
//! certificate mode `app_cert_sn` and `alipay_root_cert_sn` equal to the app's, and the
//! RSA2 signature with the app's public key over every non-empty parameter but `sign`,
//! sorted, `k=v&…`. Then the method's own fields (amounts in yuan with at most two
//! decimals, required fields). Answers are `{"<method>_response":{…},"sign":"…"}` signed
//! with Alipay's key over the response text as sent, with `alipay_cert_sn` beside it in
//! certificate mode.
//!
//! Refunds are remembered per `out_request_no`: the same one again answers
//! `fund_change` `N` with the trade's refunded total, as Alipay does. A test can make a
//! method refuse (`40004` with its `sub_code`), answer "service unavailable" (`20000`),
//! or sign answers with a key the host does not know.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::fake_provider::serve_stand_in;

/// The SNs of a certificate-mode app.
#[derive(Debug, Clone)]
pub struct CertSns {
    /// The app certificate's SN the requests must carry.
    pub app_cert_sn: String,
    /// The root bundle's SN the requests must carry.
    pub alipay_root_cert_sn: String,
    /// Alipay's certificate's SN, sent beside each answer's `sign`.
    pub alipay_cert_sn: String,
}

/// The app the stand-in serves.
#[derive(Clone)]
pub struct App {
    /// Its `app_id`.
    pub app_id: String,
    /// The app's public key: requests must verify with it.
    pub app_key: RsaPublicKey,
    /// Alipay's key: answers are signed with it.
    pub alipay_key: RsaPrivateKey,
    /// Certificate mode's SNs; `None` for public-key mode (then requests must carry none).
    pub certs: Option<CertSns>,
}

/// One request the stand-in received (checked or not).
#[derive(Debug, Clone)]
pub struct Received {
    /// `method`.
    pub method: String,
    /// Every parameter, decoded.
    pub params: BTreeMap<String, String>,
    /// `biz_content`, parsed (`Null` when it is not JSON).
    pub biz: Value,
}

/// A refund it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeRefund {
    /// `out_request_no`.
    pub out_request_no: String,
    /// Fen.
    pub fen: i64,
    /// How many requests asked for it (1 + repeats).
    pub asked: u32,
}

#[derive(Debug, Clone, Default)]
struct Trade {
    fen: i64,
    /// Set once paid.
    trade_no: Option<String>,
    closed: bool,
    refunded: i64,
    refunds: Vec<MadeRefund>,
    qr_code: String,
}

/// What it has seen, and what it will do.
#[derive(Default)]
pub struct StandInState {
    /// Every request, in order.
    pub requests: Vec<Received>,
    /// Requests refused for their common parameters or signature, with why (there should
    /// be none from the host).
    pub bad_requests: Vec<String>,
    trades: HashMap<String, Trade>,
    /// Methods that refuse, with (`code`, `sub_code`, `sub_msg`).
    refusing: HashMap<String, (String, String, String)>,
    /// Sign answers with a stranger's key.
    bad_signature: bool,
}

#[derive(Clone)]
struct Shared {
    app: Arc<App>,
    stranger: RsaPrivateKey,
    state: Arc<Mutex<StandInState>>,
}

/// A running stand-in.
pub struct AlipayStandIn {
    /// `http://127.0.0.1:PORT`: the account's `api_base`.
    pub base: String,
    state: Arc<Mutex<StandInState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl AlipayStandIn {
    /// Starts one for `app` on a free loopback port.
    pub async fn start(app: App) -> AlipayStandIn {
        let shared = Shared {
            app: Arc::new(app),
            stranger: RsaPrivateKey::new(&mut rand::thread_rng(), 1024).expect("RSA key"),
            state: Arc::new(Mutex::new(StandInState::default())),
        };
        let router = Router::new()
            .route("/gateway.do", post(gateway))
            .with_state(shared.clone());
        let (base, tx) = serve_stand_in(router).await;
        AlipayStandIn {
            base,
            state: shared.state,
            shutdown: Some(tx),
        }
    }

    /// Its state, to read what it received.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, StandInState> {
        self.state.lock().expect("stand-in state")
    }

    /// Requests of `method` received so far.
    pub fn received(&self, method: &str) -> Vec<Received> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method == method)
            .cloned()
            .collect()
    }

    /// How many requests it received, of any method.
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// The buyer paid `out_trade_no` (`fen`, Alipay's `trade_no`): as after the cashier.
    pub fn pay(&self, out_trade_no: &str, fen: i64, trade_no: &str) {
        let mut s = self.lock();
        let t = s.trades.entry(out_trade_no.into()).or_default();
        t.fen = fen;
        t.trade_no = Some(trade_no.into());
    }

    /// The refunds made on `out_trade_no`, in order.
    pub fn refunds(&self, out_trade_no: &str) -> Vec<MadeRefund> {
        self.lock()
            .trades
            .get(out_trade_no)
            .map(|t| t.refunds.clone())
            .unwrap_or_default()
    }

    /// Makes `method` refuse with `40004` `sub_code` `sub_msg` (or, with `code` `20000`,
    /// answer "service unavailable") until [`AlipayStandIn::accept`].
    pub fn refuse(&self, method: &str, code: &str, sub_code: &str, sub_msg: &str) {
        self.lock().refusing.insert(
            method.into(),
            (code.into(), sub_code.into(), sub_msg.into()),
        );
    }

    /// Makes `method` work again.
    pub fn accept(&self, method: &str) {
        self.lock().refusing.remove(method);
    }

    /// Signs answers with a key the host does not know (`on`), or with Alipay's again.
    pub fn bad_signature(&self, on: bool) {
        self.lock().bad_signature = on;
    }
}

impl Drop for AlipayStandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Whether `params` carry an RSA2 `sign` by `app_key` over every non-empty parameter but
/// `sign`, sorted by name, `k=v` joined by `&` (Alipay's rule for requests, and for the
/// page/wap URLs and app order strings the buyer's client sends it).
pub fn app_signed(params: &BTreeMap<String, String>, app_key: &RsaPublicKey) -> bool {
    let text = params
        .iter()
        .filter(|(k, v)| k.as_str() != "sign" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let sign = params.get("sign").map(String::as_str).unwrap_or("");
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sign) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(bytes.as_slice()) else {
        return false;
    };
    VerifyingKey::<Sha256>::new(app_key.clone())
        .verify(text.as_bytes(), &sig)
        .is_ok()
}

/// Yuan with at most two decimals → fen, strictly (`0.01`, `12`, `3.5`).
pub fn yuan_to_fen(s: &str) -> Option<i64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 2 {
        return None;
    }
    if s.contains('.') && frac.is_empty() {
        return None;
    }
    let frac_fen: i64 = format!("{frac:0<2}").parse().ok()?;
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(frac_fen)
}

/// Fen as yuan with two decimals.
pub fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `yyyy-MM-dd HH:mm:ss` in China time (UTC+8) → unix seconds; `None` unless exactly
/// that shape.
pub fn china_time_to_unix(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - 8 * 3600)
}

/// Unix seconds → `yyyy-MM-dd HH:mm:ss` in China time.
pub fn unix_to_china_time(secs: i64) -> String {
    let t = secs + 8 * 3600;
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Inverse of `days_from_civil`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why the common parameters or the signature are wrong, as Alipay would refuse them.
fn common_problem(app: &App, p: &BTreeMap<String, String>) -> Option<String> {
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    if get("app_id") != app.app_id {
        return Some(format!("app_id `{}`", get("app_id")));
    }
    for (k, want) in [
        ("charset", "utf-8"),
        ("sign_type", "RSA2"),
        ("version", "1.0"),
    ] {
        if get(k) != want {
            return Some(format!("{k} `{}`, want `{want}`", get(k)));
        }
    }
    if !matches!(get("format"), "" | "JSON") {
        return Some(format!("format `{}`", get("format")));
    }
    match china_time_to_unix(get("timestamp")) {
        Some(t) if (t - now_secs()).abs() <= 600 => {}
        _ => return Some(format!("timestamp `{}` is not now", get("timestamp"))),
    }
    match &app.certs {
        Some(c) => {
            if get("app_cert_sn") != c.app_cert_sn {
                return Some(format!("app_cert_sn `{}`", get("app_cert_sn")));
            }
            if get("alipay_root_cert_sn") != c.alipay_root_cert_sn {
                return Some(format!(
                    "alipay_root_cert_sn `{}`",
                    get("alipay_root_cert_sn")
                ));
            }
        }
        None => {
            if p.contains_key("app_cert_sn") || p.contains_key("alipay_root_cert_sn") {
                return Some("certificate SNs in a public-key-mode request".into());
            }
        }
    }
    if !app_signed(p, &app.app_key) {
        return Some("signature does not verify with the app public key".into());
    }
    None
}

fn business_failed(sub_code: &str, sub_msg: &str) -> Value {
    json!({"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg})
}

async fn gateway(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let form_ok = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let params: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let method = params.get("method").cloned().unwrap_or_default();
    let biz: Value = params
        .get("biz_content")
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    let mut state = shared.state.lock().expect("stand-in state");
    state.requests.push(Received {
        method: method.clone(),
        params: params.clone(),
        biz: biz.clone(),
    });
    let problem = if form_ok {
        common_problem(&shared.app, &params)
    } else {
        Some("not a form".into())
    };
    let inner = if let Some(why) = problem {
        state.bad_requests.push(format!("{method}: {why}"));
        json!({"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature", "sub_msg": format!("验签出错: {why}")})
    } else if !biz.is_object() {
        state
            .bad_requests
            .push(format!("{method}: biz_content is not a JSON object"));
        json!({"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-parameter", "sub_msg": "biz_content"})
    } else if let Some((code, sub_code, sub_msg)) = state.refusing.get(&method).cloned() {
        if code == "20000" {
            json!({"code": "20000", "msg": "Service Currently Unavailable", "sub_code": sub_code, "sub_msg": sub_msg})
        } else {
            json!({"code": code, "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg})
        }
    } else {
        match method.as_str() {
            "alipay.trade.precreate" => precreate(&mut state, &params, &biz),
            "alipay.trade.refund" => refund(&mut state, &biz),
            "alipay.trade.close" => close(&mut state, &biz),
            "alipay.trade.query" => query(&state, &biz),
            other => {
                // page/wap/app are sent by the buyer's client, never by the host.
                state
                    .bad_requests
                    .push(format!("{other}: not a method the host sends"));
                json!({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.INVALID_METHOD", "sub_msg": other})
            }
        }
    };
    let key = if state.bad_signature {
        shared.stranger.clone()
    } else {
        shared.app.alipay_key.clone()
    };
    drop(state);
    let node = if method.is_empty() {
        "error_response".to_owned()
    } else {
        format!("{}_response", method.replace('.', "_"))
    };
    // Alipay signs the response text exactly as it appears in the body.
    let inner_text = inner.to_string();
    let sign = base64::engine::general_purpose::STANDARD.encode(
        SigningKey::<Sha256>::new(key)
            .sign(inner_text.as_bytes())
            .to_bytes(),
    );
    let cert = shared
        .app
        .certs
        .as_ref()
        .map(|c| format!(",\"alipay_cert_sn\":\"{}\"", c.alipay_cert_sn))
        .unwrap_or_default();
    let body = format!("{{\"{node}\":{inner_text}{cert},\"sign\":\"{sign}\"}}");
    ([("content-type", "text/html;charset=utf-8")], body).into_response()
}

fn s<'a>(biz: &'a Value, k: &str) -> &'a str {
    biz.get(k).and_then(Value::as_str).unwrap_or("")
}

fn precreate(state: &mut StandInState, params: &BTreeMap<String, String>, biz: &Value) -> Value {
    let no = s(biz, "out_trade_no");
    let Some(fen) =
        yuan_to_fen(s(biz, "total_amount")).filter(|f| (1..=10_000_000_000).contains(f))
    else {
        return business_failed("ACQ.INVALID_PARAMETER", "total_amount");
    };
    if no.is_empty() || no.len() > 64 || s(biz, "subject").is_empty() {
        return business_failed("ACQ.INVALID_PARAMETER", "out_trade_no / subject");
    }
    if let Some(t) = biz.get("time_expire") {
        if t.as_str().and_then(china_time_to_unix).is_none() {
            return business_failed("ACQ.INVALID_PARAMETER", "time_expire");
        }
    }
    if let Some(url) = params.get("notify_url") {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return business_failed("ACQ.INVALID_PARAMETER", "notify_url");
        }
    }
    let trade = state.trades.entry(no.into()).or_insert_with(|| Trade {
        fen,
        qr_code: format!(
            "https://qr.alipay.com/bax0{}",
            hex::encode(rand::random::<[u8; 8]>())
        ),
        ..Default::default()
    });
    if trade.trade_no.is_some() {
        return business_failed("ACQ.TRADE_HAS_SUCCESS", "交易已被支付");
    }
    if trade.closed {
        return business_failed("ACQ.TRADE_HAS_CLOSE", "交易已经关闭");
    }
    if trade.fen != fen {
        return business_failed("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改");
    }
    json!({"code": "10000", "msg": "Success", "out_trade_no": no, "qr_code": trade.qr_code})
}

fn refund(state: &mut StandInState, biz: &Value) -> Value {
    let no = s(biz, "out_trade_no");
    let request_no = s(biz, "out_request_no");
    let Some(fen) = yuan_to_fen(s(biz, "refund_amount")).filter(|f| *f > 0) else {
        return business_failed("ACQ.INVALID_PARAMETER", "refund_amount");
    };
    if request_no.is_empty() {
        // Optional at Alipay for a full refund; the host always sends one.
        return business_failed("ACQ.INVALID_PARAMETER", "out_request_no");
    }
    let Some(trade) = state.trades.get_mut(no) else {
        return business_failed("ACQ.TRADE_NOT_EXIST", "交易不存在");
    };
    let Some(trade_no) = trade.trade_no.clone() else {
        return business_failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法");
    };
    if let Some(t) = biz.get("trade_no") {
        if t.as_str() != Some(trade_no.as_str()) {
            return business_failed("ACQ.TRADE_NOT_EXIST", "交易不存在");
        }
    }
    let fund_change = match trade
        .refunds
        .iter_mut()
        .find(|r| r.out_request_no == request_no)
    {
        Some(r) if r.fen == fen => {
            r.asked += 1;
            "N"
        }
        Some(_) => return business_failed("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限"),
        None => {
            if fen > trade.fen - trade.refunded {
                return business_failed("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限");
            }
            trade.refunded += fen;
            trade.refunds.push(MadeRefund {
                out_request_no: request_no.into(),
                fen,
                asked: 1,
            });
            "Y"
        }
    };
    json!({
        "code": "10000", "msg": "Success", "trade_no": trade_no, "out_trade_no": no,
        "buyer_logon_id": "159****5620", "fund_change": fund_change,
        "refund_fee": yuan(trade.refunded), "send_back_fee": yuan(fen),
        "gmt_refund_pay": unix_to_china_time(now_secs()), "buyer_user_id": "2088101117955611"
    })
}

fn close(state: &mut StandInState, biz: &Value) -> Value {
    let no = s(biz, "out_trade_no");
    match state.trades.get_mut(no) {
        None => business_failed("ACQ.TRADE_NOT_EXIST", "交易不存在"),
        Some(t) if t.trade_no.is_some() => {
            business_failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        }
        Some(t) => {
            t.closed = true;
            json!({"code": "10000", "msg": "Success", "out_trade_no": no})
        }
    }
}

fn query(state: &StandInState, biz: &Value) -> Value {
    let no = s(biz, "out_trade_no");
    match state.trades.get(no) {
        None => business_failed("ACQ.TRADE_NOT_EXIST", "交易不存在"),
        Some(t) => {
            let status = match (&t.trade_no, t.closed) {
                (Some(_), _) => "TRADE_SUCCESS",
                (None, true) => "TRADE_CLOSED",
                (None, false) => "WAIT_BUYER_PAY",
            };
            json!({
                "code": "10000", "msg": "Success", "out_trade_no": no,
                "trade_no": t.trade_no.clone().unwrap_or_default(), "trade_status": status,
                "total_amount": yuan(t.fen), "send_pay_date": "2026-01-01 08:00:05"
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn china_times_round_trip() {
        // 2026-01-01 00:30:00 UTC.
        assert_eq!(unix_to_china_time(1_767_227_400), "2026-01-01 08:30:00");
        assert_eq!(
            china_time_to_unix("2026-01-01 08:30:00"),
            Some(1_767_227_400)
        );
        assert_eq!(china_time_to_unix("2026-1-01 08:30:00"), None);
        assert_eq!(yuan_to_fen("0.01"), Some(1));
        assert_eq!(yuan_to_fen("1.5"), Some(150));
        assert_eq!(yuan_to_fen("1."), None);
        assert_eq!(yuan_to_fen("0.001"), None);
    }
}
