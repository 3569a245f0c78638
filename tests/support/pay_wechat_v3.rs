//! A stand-in for WeChat Pay v3's payment and refund API, for a direct merchant
//! ([`wechat_v3::MCH_ID_A`]) and a service provider ([`wechat_v3_partner::SP_MCHID`] with
//! its sub-merchants A and B):
//!
//! - `POST /v3/pay/transactions/{jsapi|native|h5|app}` and
//!   `POST /v3/pay/partner/transactions/{method}`: place an order;
//! - `POST /v3/refund/domestic/refunds`: start a refund;
//! - `POST /v3/pay/transactions/out-trade-no/{no}/close` and its partner form: close.
//!
//! Each request is checked as WeChat Pay checks it: the `Authorization` signature with
//! the merchant's public key (the host signs with [`fake_provider::host_keys`]'s merchant
//! key), the merchant certificate serial, the `mchid` signing matching the body's, the
//! app ids belonging to the merchant, every required field and its format. Answers are
//! signed with WeChat Pay's key ([`wechat_v3::signed_answer`]). Like WeChat Pay it
//! remembers each order: the same order placed again gets the same prepay id, another
//! amount under the same number is refused (`INVALID_REQUEST`), a closed one cannot be
//! placed (`ORDER_CLOSED`); the same refund number asked again answers the same refund.
//!
//! The test can make it refuse an order or refund ([`PayStandIn::refuse`]), sign its
//! answers with a stranger's key ([`PayStandIn::bad_signature`]), and reads what it
//! received ([`PayStandIn::lock`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::wechat_v3_partner::{SP_APPID, SP_MCHID, SUB_A, SUB_APPID_A, SUB_B};
use crate::{fake_provider, wechat_v3};

/// A request the stand-in accepted as signed by the merchant (whatever it answered).
#[derive(Debug, Clone)]
pub struct Received {
    /// The path.
    pub path: String,
    /// The merchant whose key signed it (`mchid` of `Authorization`).
    pub mchid: String,
    /// The JSON body.
    pub body: Value,
}

/// An order as WeChat Pay holds it.
#[derive(Debug, Clone)]
pub struct Held {
    /// `jsapi`, `native`, `h5` or `app`.
    pub method: String,
    /// The sub-merchant (partner orders).
    pub sub_mchid: Option<String>,
    /// `amount.total`.
    pub total: i64,
    /// The prepay id (`code_url` and `h5_url` are made from it too).
    pub prepay_id: String,
    /// Closed by the merchant.
    pub closed: bool,
    /// Paid: its transaction id (set by the test, [`PayStandIn::paid`]).
    pub transaction_id: Option<String>,
}

/// A refund as WeChat Pay holds it.
#[derive(Debug, Clone)]
pub struct HeldRefund {
    /// The merchant's number.
    pub out_refund_no: String,
    /// WeChat's refund id.
    pub refund_id: String,
    /// The payment refunded.
    pub transaction_id: String,
    /// Its order.
    pub out_trade_no: String,
    /// Fen refunded.
    pub refund: i64,
    /// The payment's total.
    pub total: i64,
    /// The sub-merchant (partner orders).
    pub sub_mchid: Option<String>,
}

/// What the stand-in has seen and will say.
#[derive(Default)]
pub struct PayState {
    /// Orders by (merchant, out_trade_no).
    pub orders: HashMap<(String, String), Held>,
    /// Refunds by out_refund_no.
    pub refunds: BTreeMap<String, HeldRefund>,
    /// Every request that verified, in order.
    pub received: Vec<Received>,
    /// Requests WeChat Pay would not accept (signature, fields): what was wrong.
    pub bad_requests: Vec<String>,
    /// Order or refund numbers to refuse: (HTTP status, code, message).
    refusals: HashMap<String, (u16, String, String)>,
    /// Order or refund numbers whose answers are signed with a stranger's key.
    bad_signature: HashSet<String>,
    /// Refund numbers answered with this `status` (`ABNORMAL`, `SUCCESS`…) instead of
    /// `PROCESSING`.
    refund_status: HashMap<String, String>,
}

impl PayState {
    /// The bodies received at paths ending with `suffix`.
    pub fn bodies(&self, suffix: &str) -> Vec<Value> {
        self.received
            .iter()
            .filter(|r| r.path.ends_with(suffix))
            .map(|r| r.body.clone())
            .collect()
    }
}

type Shared = Arc<Mutex<PayState>>;

/// A running stand-in.
pub struct PayStandIn {
    /// `http://127.0.0.1:PORT`, the accounts' `api_base`.
    pub base: String,
    state: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl PayStandIn {
    /// Starts it on a free loopback port.
    pub async fn start() -> PayStandIn {
        let state: Shared = Arc::default();
        let router = Router::new()
            .route("/v3/pay/transactions/{method}", post(place_direct))
            .route("/v3/pay/partner/transactions/{method}", post(place_partner))
            .route("/v3/refund/domestic/refunds", post(refund))
            .route("/v3/pay/transactions/out-trade-no/{no}/close", post(close))
            .route(
                "/v3/pay/partner/transactions/out-trade-no/{no}/close",
                post(close),
            )
            .with_state(state.clone());
        let (base, tx) = fake_provider::serve_stand_in(router).await;
        PayStandIn {
            base,
            state,
            shutdown: Some(tx),
        }
    }

    /// Refuses `no` (an out_trade_no or out_refund_no) with `code`/`message` (HTTP 400)
    /// until [`PayStandIn::accept`].
    pub fn refuse(&self, no: &str, code: &str, message: &str) {
        self.lock()
            .refusals
            .insert(no.into(), (400, code.into(), message.into()));
    }

    /// Signs answers about `no` with a stranger's key until [`PayStandIn::accept`].
    pub fn bad_signature(&self, no: &str) {
        self.lock().bad_signature.insert(no.into());
    }

    /// Answers about `no` normally again.
    pub fn accept(&self, no: &str) {
        let mut s = self.lock();
        s.refusals.remove(no);
        s.bad_signature.remove(no);
    }

    /// Answers refund `out_refund_no` with `status` (`ABNORMAL`, `SUCCESS`…).
    pub fn refund_status(&self, out_refund_no: &str, status: &str) {
        self.lock()
            .refund_status
            .insert(out_refund_no.into(), status.into());
    }

    /// The buyer paid order `no` of merchant `mchid` (the direct merchant or the service
    /// provider): it can be refunded by `transaction_id`, and no longer closed.
    pub fn paid(&self, mchid: &str, no: &str, transaction_id: &str) {
        let mut s = self.lock();
        let held = s
            .orders
            .get_mut(&(mchid.to_owned(), no.to_owned()))
            .expect("the order was placed at the stand-in");
        held.transaction_id = Some(transaction_id.into());
    }

    /// The order `no` of merchant `mchid`, as held.
    pub fn order(&self, mchid: &str, no: &str) -> Option<Held> {
        self.lock()
            .orders
            .get(&(mchid.to_owned(), no.to_owned()))
            .cloned()
    }

    /// What it has seen.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, PayState> {
        self.state.lock().expect("pay stand-in state")
    }
}

impl Drop for PayStandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The `mchid` whose merchant key signed the request, if `Authorization` verifies over
/// `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n` with the merchant's public key, names
/// the merchant certificate's serial and is fresh.
fn signer(uri: &Uri, headers: &HeaderMap, body: &str) -> Result<String, String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(params) = auth.strip_prefix("WECHATPAY2-SHA256-RSA2048 ") else {
        return Err(format!("authorization scheme: `{auth}`"));
    };
    let p: HashMap<String, String> = params
        .split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect();
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let path = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("");
    let message = format!(
        "POST\n{path}\n{}\n{}\n{body}\n",
        get("timestamp"),
        get("nonce_str")
    );
    let key = fake_provider::host_keys().0.to_public_key();
    let signature_ok = base64::engine::general_purpose::STANDARD
        .decode(get("signature"))
        .ok()
        .and_then(|b| Signature::try_from(b.as_slice()).ok())
        .is_some_and(|sig| {
            VerifyingKey::<Sha256>::new(key)
                .verify(message.as_bytes(), &sig)
                .is_ok()
        });
    if !signature_ok {
        return Err(format!("signature does not verify: {auth}"));
    }
    if get("serial_no") != fake_provider::V3_MERCHANT_SERIAL {
        return Err(format!("serial_no `{}`", get("serial_no")));
    }
    let ts: i64 = get("timestamp").parse().unwrap_or(0);
    if (ts - wechat_v3::now()).abs() > 300 {
        return Err(format!("timestamp {ts} is stale"));
    }
    if get("nonce_str").is_empty() {
        return Err("no nonce_str".into());
    }
    let mchid = get("mchid");
    if mchid != wechat_v3::MCH_ID_A && mchid != SP_MCHID {
        return Err(format!("unknown merchant `{mchid}`"));
    }
    Ok(mchid)
}

/// An answer about `no`, signed by WeChat Pay (or a stranger, when told).
fn answer(state: &Shared, no: &str, status: StatusCode, body: String) -> Response {
    let k = wechat_v3::keys();
    let bad = state.lock().expect("state").bad_signature.contains(no);
    let key = if bad { &k[3] } else { &k[0] };
    wechat_v3::signed_answer(key, wechat_v3::PUB_KEY_ID_A, status, body)
}

fn error(state: &Shared, no: &str, status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "code": code, "message": message }).to_string();
    answer(state, no, status, body)
}

/// A request WeChat Pay refuses: recorded as bad, answered `PARAM_ERROR` (or
/// `SIGN_ERROR`).
fn bad(state: &Shared, what: String, sign: bool) -> Response {
    state.lock().expect("state").bad_requests.push(what.clone());
    if sign {
        error(state, "", StatusCode::UNAUTHORIZED, "SIGN_ERROR", &what)
    } else {
        error(state, "", StatusCode::BAD_REQUEST, "PARAM_ERROR", &what)
    }
}

/// Unix seconds of an RFC 3339 time with whole seconds and an offset, as WeChat Pay
/// writes and reads them (`2026-01-01T08:30:00+08:00`).
pub fn rfc3339_secs(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 25 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || !matches!(b[19], b'+' | b'-') || b[22] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let offset = (n(20..22)? * 60 + n(23..25)?) * 60 * if b[19] == b'-' { -1 } else { 1 };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss - offset)
}

fn text<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Checks the fields every order has, whoever places it; returns (total, out_trade_no).
fn check_common(v: &Value, method: &str) -> Result<(i64, String), String> {
    let allowed_direct = ["appid", "mchid"];
    let allowed_partner = ["sp_appid", "sp_mchid", "sub_appid", "sub_mchid"];
    let allowed_common = [
        "description",
        "out_trade_no",
        "time_expire",
        "attach",
        "notify_url",
        "goods_tag",
        "support_fapiao",
        "amount",
        "payer",
        "detail",
        "scene_info",
        "settle_info",
    ];
    let Some(obj) = v.as_object() else {
        return Err("the body is not a JSON object".into());
    };
    for k in obj.keys() {
        let known = allowed_common.contains(&k.as_str())
            || allowed_direct.contains(&k.as_str())
            || allowed_partner.contains(&k.as_str());
        if !known {
            return Err(format!("unknown field `{k}`"));
        }
    }
    let description = text(v, "description").ok_or("no description")?;
    if description.chars().count() > 127 {
        return Err("description is over 127 characters".into());
    }
    let no = text(v, "out_trade_no").ok_or("no out_trade_no")?;
    if !(6..=32).contains(&no.len()) {
        return Err(format!("out_trade_no `{no}` is not 6-32 characters"));
    }
    let notify = text(v, "notify_url").ok_or("no notify_url")?;
    if !notify.starts_with("https://") {
        return Err(format!("notify_url `{notify}` is not https"));
    }
    if let Some(t) = v.get("time_expire") {
        let t = t.as_str().unwrap_or("");
        let at = rfc3339_secs(t).ok_or_else(|| format!("time_expire `{t}` is not RFC 3339"))?;
        if at <= wechat_v3::now() {
            return Err(format!("time_expire `{t}` is past"));
        }
    }
    let total = v["amount"]["total"]
        .as_i64()
        .filter(|t| *t > 0)
        .ok_or("amount.total is not a positive whole number of fen")?;
    if let Some(c) = v["amount"].get("currency") {
        if c != "CNY" {
            return Err(format!("amount.currency {c}"));
        }
    }
    if method == "h5" {
        if text(&v["scene_info"], "payer_client_ip").is_none() {
            return Err("h5: no scene_info.payer_client_ip".into());
        }
        if text(&v["scene_info"]["h5_info"], "type").is_none() {
            return Err("h5: no scene_info.h5_info.type".into());
        }
    }
    if method != "jsapi" && v.get("payer").is_some() {
        return Err(format!("{method}: payer is for jsapi"));
    }
    Ok((total, no.to_owned()))
}

/// Checks a direct order; returns the out_trade_no and the merchant.
fn check_direct(v: &Value, signer: &str, method: &str) -> Result<(i64, String), String> {
    let (total, no) = check_common(v, method)?;
    if text(v, "mchid") != Some(signer) || signer != wechat_v3::MCH_ID_A {
        return Err(format!("mchid {} is not the signer {signer}", v["mchid"]));
    }
    if text(v, "appid") != Some(wechat_v3::APPID_A) {
        return Err(format!("appid {} is not bound to {signer}", v["appid"]));
    }
    for k in ["sp_appid", "sp_mchid", "sub_appid", "sub_mchid"] {
        if v.get(k).is_some() {
            return Err(format!("`{k}` in a direct order"));
        }
    }
    if method == "jsapi" {
        let payer = v["payer"].as_object().ok_or("jsapi: no payer")?;
        if payer.keys().any(|k| k != "openid") || text(&v["payer"], "openid").is_none() {
            return Err(format!("jsapi: payer {} is not {{openid}}", v["payer"]));
        }
    }
    Ok((total, no))
}

/// Checks a partner order; returns (total, out_trade_no, sub_mchid).
fn check_partner(v: &Value, signer: &str, method: &str) -> Result<(i64, String, String), String> {
    let (total, no) = check_common(v, method)?;
    if text(v, "sp_mchid") != Some(signer) || signer != SP_MCHID {
        return Err(format!(
            "sp_mchid {} is not the signer {signer}",
            v["sp_mchid"]
        ));
    }
    if text(v, "sp_appid") != Some(SP_APPID) {
        return Err(format!(
            "sp_appid {} is not bound to {signer}",
            v["sp_appid"]
        ));
    }
    for k in ["appid", "mchid"] {
        if v.get(k).is_some() {
            return Err(format!("`{k}` in a partner order"));
        }
    }
    let sub = text(v, "sub_mchid").ok_or("no sub_mchid")?;
    let sub_app = match sub {
        SUB_A => Some(SUB_APPID_A),
        SUB_B => None,
        other => {
            return Err(format!(
                "sub_mchid {other} is not a sub-merchant of {signer}"
            ))
        }
    };
    let sub_appid = text(v, "sub_appid");
    if sub_appid.is_some() && sub_appid != sub_app {
        return Err(format!(
            "sub_appid {} is not bound to {sub}",
            v["sub_appid"]
        ));
    }
    if method == "jsapi" {
        let payer = v["payer"].as_object().ok_or("jsapi: no payer")?;
        let sp = text(&v["payer"], "sp_openid");
        let sub_openid = text(&v["payer"], "sub_openid");
        if payer.keys().any(|k| k != "sp_openid" && k != "sub_openid")
            || (sp.is_none() && sub_openid.is_none())
        {
            return Err(format!(
                "jsapi: payer {} has no sp_openid or sub_openid",
                v["payer"]
            ));
        }
        if sub_openid.is_some() && sub_appid.is_none() {
            return Err("jsapi: sub_openid without sub_appid".into());
        }
    }
    Ok((total, no, sub.to_owned()))
}

/// Remembers and answers an order that passed the checks.
fn placed(
    state: &Shared,
    mchid: &str,
    method: &str,
    no: &str,
    total: i64,
    sub_mchid: Option<String>,
) -> Response {
    let refusal = state.lock().expect("state").refusals.get(no).cloned();
    if let Some((status, code, message)) = refusal {
        let status = StatusCode::from_u16(status).expect("status");
        return error(state, no, status, &code, &message);
    }
    let held = {
        let mut s = state.lock().expect("state");
        let key = (mchid.to_owned(), no.to_owned());
        let held = s.orders.entry(key).or_insert_with(|| Held {
            method: method.into(),
            sub_mchid: sub_mchid.clone(),
            total,
            prepay_id: format!("wx{}", hex::encode(rand::random::<[u8; 14]>())),
            closed: false,
            transaction_id: None,
        });
        held.clone()
    };
    if held.closed {
        return error(
            state,
            no,
            StatusCode::BAD_REQUEST,
            "ORDER_CLOSED",
            "订单已关闭",
        );
    }
    if held.transaction_id.is_some() {
        return error(
            state,
            no,
            StatusCode::BAD_REQUEST,
            "ORDERPAID",
            "该订单已支付",
        );
    }
    if held.total != total || held.method != method || held.sub_mchid != sub_mchid {
        return error(
            state,
            no,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "201 商户订单号重复",
        );
    }
    let body = match method {
        "native" => {
            json!({ "code_url": format!("weixin://wxpay/bizpayurl?pr={}", held.prepay_id) })
        }
        "h5" => json!({
            "h5_url": format!("https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={}&package=2150917749", held.prepay_id)
        }),
        _ => json!({ "prepay_id": held.prepay_id }),
    };
    answer(state, no, StatusCode::OK, body.to_string())
}

/// Verifies the signature and parses the body; records it. The error is the answer.
fn receive(
    state: &Shared,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> Result<(String, Value), Box<Response>> {
    let mchid = signer(uri, headers, body)
        .map_err(|why| Box::new(bad(state, format!("{}: {why}", uri.path()), true)))?;
    let v: Value = serde_json::from_str(body)
        .map_err(|e| Box::new(bad(state, format!("{}: not JSON: {e}", uri.path()), false)))?;
    state.lock().expect("state").received.push(Received {
        path: uri.path().to_owned(),
        mchid: mchid.clone(),
        body: v.clone(),
    });
    Ok((mchid, v))
}

const METHODS: [&str; 4] = ["jsapi", "native", "h5", "app"];

async fn place_direct(
    State(state): State<Shared>,
    Path(method): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (mchid, v) = match receive(&state, &uri, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if !METHODS.contains(&method.as_str()) {
        return bad(&state, format!("no such method {method}"), false);
    }
    match check_direct(&v, &mchid, &method) {
        Ok((total, no)) => placed(&state, &mchid, &method, &no, total, None),
        Err(why) => bad(&state, format!("{}: {why}", uri.path()), false),
    }
}

async fn place_partner(
    State(state): State<Shared>,
    Path(method): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (mchid, v) = match receive(&state, &uri, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if !METHODS.contains(&method.as_str()) {
        return bad(&state, format!("no such method {method}"), false);
    }
    match check_partner(&v, &mchid, &method) {
        Ok((total, no, sub)) => placed(&state, &mchid, &method, &no, total, Some(sub)),
        Err(why) => bad(&state, format!("{}: {why}", uri.path()), false),
    }
}

async fn refund(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (mchid, v) = match receive(&state, &uri, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let checked = (|| -> Result<(String, String, i64, i64, Option<String>), String> {
        let allowed = [
            "sub_mchid",
            "transaction_id",
            "out_trade_no",
            "out_refund_no",
            "reason",
            "notify_url",
            "funds_account",
            "amount",
            "goods_detail",
        ];
        let obj = v.as_object().ok_or("the body is not a JSON object")?;
        if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(format!("unknown field `{k}`"));
        }
        let transaction_id = text(&v, "transaction_id").ok_or("no transaction_id")?;
        let no = text(&v, "out_refund_no").ok_or("no out_refund_no")?;
        if no.len() > 64 {
            return Err("out_refund_no is over 64 characters".into());
        }
        if let Some(r) = v.get("reason") {
            if r.as_str().is_none_or(|r| r.chars().count() > 80) {
                return Err("reason is not text of at most 80 characters".into());
            }
        }
        if let Some(n) = v.get("notify_url") {
            if !n.as_str().unwrap_or("").starts_with("https://") {
                return Err(format!("notify_url {n} is not https"));
            }
        }
        let refund = v["amount"]["refund"]
            .as_i64()
            .filter(|r| *r > 0)
            .ok_or("amount.refund is not a positive whole number")?;
        let total = v["amount"]["total"]
            .as_i64()
            .filter(|t| *t > 0)
            .ok_or("amount.total is not a positive whole number")?;
        if v["amount"]["currency"] != "CNY" {
            return Err(format!("amount.currency {}", v["amount"]["currency"]));
        }
        let sub = text(&v, "sub_mchid").map(str::to_owned);
        if (mchid == SP_MCHID) != sub.is_some() {
            return Err(format!(
                "sub_mchid {:?} for merchant {mchid}",
                sub.as_deref()
            ));
        }
        Ok((transaction_id.to_owned(), no.to_owned(), refund, total, sub))
    })();
    let (transaction_id, no, amount, total, sub) = match checked {
        Ok(c) => c,
        Err(why) => return bad(&state, format!("{}: {why}", uri.path()), false),
    };
    let refusal = state.lock().expect("state").refusals.get(&no).cloned();
    if let Some((status, code, message)) = refusal {
        let status = StatusCode::from_u16(status).expect("status");
        return error(&state, &no, status, &code, &message);
    }
    let decided = {
        let mut s = state.lock().expect("state");
        let trade = s.orders.iter().find(|((m, _), h)| {
            *m == mchid && h.transaction_id.as_deref() == Some(transaction_id.as_str())
        });
        match trade {
            None => Err(("RESOURCE_NOT_EXISTS", "订单不存在".to_owned())),
            Some(((_, out_trade_no), held)) if held.sub_mchid != sub => Err((
                "INVALID_REQUEST",
                format!("sub_mchid does not match order {out_trade_no}"),
            )),
            Some((_, held)) if held.total != total => {
                Err(("INVALID_REQUEST", "订单金额与退款单不一致".to_owned()))
            }
            Some(((_, out_trade_no), held)) => {
                let out_trade_no = out_trade_no.clone();
                let held_total = held.total;
                match s.refunds.get(&no) {
                    Some(r) if r.refund != amount || r.transaction_id != transaction_id => Err((
                        "INVALID_REQUEST",
                        "退款单号重复，且请求参数与原退款单不一致".to_owned(),
                    )),
                    Some(r) => Ok(r.clone()),
                    None => {
                        let refunded: i64 = s
                            .refunds
                            .values()
                            .filter(|r| r.transaction_id == transaction_id)
                            .map(|r| r.refund)
                            .sum();
                        if refunded + amount > held_total {
                            Err(("INVALID_REQUEST", "申请退款金额超过订单可退金额".to_owned()))
                        } else {
                            let r = HeldRefund {
                                out_refund_no: no.clone(),
                                refund_id: format!(
                                    "50300{}",
                                    hex::encode(rand::random::<[u8; 10]>())
                                ),
                                transaction_id: transaction_id.clone(),
                                out_trade_no,
                                refund: amount,
                                total: held_total,
                                sub_mchid: sub.clone(),
                            };
                            s.refunds.insert(no.clone(), r.clone());
                            Ok(r)
                        }
                    }
                }
            }
        }
    };
    let r = match decided {
        Ok(r) => r,
        Err((code, message)) => {
            return error(&state, &no, StatusCode::BAD_REQUEST, code, &message);
        }
    };
    let status = state
        .lock()
        .expect("state")
        .refund_status
        .get(&no)
        .cloned()
        .unwrap_or_else(|| "PROCESSING".into());
    let body = json!({
        "refund_id": r.refund_id,
        "out_refund_no": r.out_refund_no,
        "transaction_id": r.transaction_id,
        "out_trade_no": r.out_trade_no,
        "channel": "ORIGINAL",
        "user_received_account": "招商银行信用卡0403",
        "create_time": "2026-01-02T10:00:00+08:00",
        "status": status,
        "funds_account": "AVAILABLE",
        "amount": {
            "total": r.total, "refund": r.refund, "payer_total": r.total, "payer_refund": r.refund,
            "settlement_refund": r.refund, "settlement_total": r.total, "discount_refund": 0,
            "currency": "CNY", "refund_fee": 0
        }
    });
    answer(&state, &no, StatusCode::OK, body.to_string())
}

async fn close(
    State(state): State<Shared>,
    Path(no): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let (mchid, v) = match receive(&state, &uri, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let partner = uri.path().starts_with("/v3/pay/partner/");
    let expected = if partner {
        let sub = text(&v, "sub_mchid")
            .filter(|s| [SUB_A, SUB_B].contains(s))
            .unwrap_or("?");
        json!({ "sp_mchid": SP_MCHID, "sub_mchid": sub })
    } else {
        json!({ "mchid": wechat_v3::MCH_ID_A })
    };
    if v != expected || (mchid == SP_MCHID) != partner {
        return bad(&state, format!("{}: close body {v}", uri.path()), false);
    }
    let outcome = {
        let mut s = state.lock().expect("state");
        match s.orders.get_mut(&(mchid.clone(), no.clone())) {
            Some(h) if h.transaction_id.is_some() => Some("paid"),
            Some(h) => {
                h.closed = true;
                None
            }
            None => None,
        }
    };
    match outcome {
        Some(_) => error(
            &state,
            &no,
            StatusCode::BAD_REQUEST,
            "ORDERPAID",
            "订单已支付",
        ),
        None => answer(&state, &no, StatusCode::NO_CONTENT, String::new()),
    }
}
