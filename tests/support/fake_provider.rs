//! A fake payment provider on loopback speaking the three order APIs paynotify calls:
//! WeChat Pay v2 (`/pay/orderquery`, `/pay/closeorder`), WeChat Pay v3
//! (`GET /v3/pay/transactions/out-trade-no/{no}`, `POST …/{no}/close`) and Alipay
//! (`/gateway.do` `alipay.trade.query` / `alipay.trade.close`).
//!
//! It checks each request's signature (v2 MD5 with the API key, v3 `Authorization`
//! with the merchant's public key, Alipay RSA2 with the app's public key) and signs each
//! answer as the provider does, with the independent signers of this crate. What it
//! says about an order is set by the test ([`FakeProvider::set`]); every close call is
//! recorded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{wechat_v2, wechat_v3};

/// The fake v2 merchant's appid (an account of its own, `fake`, beside the default one).
pub const V2_APPID: &str = "wxfa4e000000000001";
/// The fake v2 merchant's mch_id.
pub const V2_MCH_ID: &str = "1900009999";
/// The fake v2 merchant's API key (generated for tests; not a real secret).
pub const V2_API_KEY: &str = "f4k3k3y000000000000000000000000f";
/// The v3 merchant API certificate serial the host sends.
pub const V3_MERCHANT_SERIAL: &str = "3775B6A45ACD588826D15E583A95F5DD2C9D5B4A";

/// What the provider knows about one order.
#[derive(Debug, Clone, PartialEq)]
pub enum Trade {
    /// Paid: this many fen, by this transaction.
    Paid {
        /// Amount in fen.
        fen: i64,
        /// The provider's transaction id.
        transaction_id: String,
    },
    /// Created, waiting for the buyer.
    Unpaid,
    /// Closed.
    Closed,
}

/// What the fake has seen and will say.
#[derive(Default)]
pub struct FakeState {
    trades: HashMap<String, Trade>,
    /// Orders whose answers are signed with the wrong key.
    bad_signature: HashSet<String>,
    /// Orders whose close fails (a provider error).
    failing_close: HashSet<String>,
    /// (provider, out_trade_no) of every close call, in order.
    pub closes: Vec<(String, String)>,
    /// (provider, out_trade_no) of every query, in order.
    pub queries: Vec<(String, String)>,
    /// Requests whose signature did not verify (there should be none).
    pub bad_requests: Vec<String>,
}

/// The keys of both sides.
#[derive(Clone)]
struct Keys {
    /// WeChat Pay's key (signs v3 answers; its public half is `PUB_KEY_ID_A` at the host).
    wechatpay: RsaPrivateKey,
    /// The v3 merchant's public key (the host signs with its private half).
    merchant: RsaPublicKey,
    /// Alipay's key (signs answers; the host has its public half).
    alipay: RsaPrivateKey,
    /// The Alipay app's public key (the host signs requests with its private half).
    app: RsaPublicKey,
    /// Signs answers that must not verify.
    stranger: RsaPrivateKey,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<FakeState>>,
    keys: Keys,
}

/// A running fake provider.
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT`, the `api_base` of the test accounts.
    pub base: String,
    state: Arc<Mutex<FakeState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Keys the host needs: (merchant private key, app private key), from
/// [`wechat_v3::keys`]: [0] is WeChat Pay's, [1] the v3 merchant's, [2] Alipay's, [3] the
/// Alipay app's.
pub fn host_keys() -> (&'static RsaPrivateKey, &'static RsaPrivateKey) {
    let k = wechat_v3::keys();
    (&k[1], &k[3])
}

impl FakeProvider {
    /// Starts it on a free loopback port.
    pub async fn start() -> FakeProvider {
        let k = wechat_v3::keys();
        let stranger = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).expect("RSA key");
        let shared = Shared {
            state: Arc::new(Mutex::new(FakeState::default())),
            keys: Keys {
                wechatpay: k[0].clone(),
                merchant: k[1].to_public_key(),
                alipay: k[2].clone(),
                app: k[3].to_public_key(),
                stranger,
            },
        };
        let router = Router::new()
            .route("/pay/orderquery", post(v2_query))
            .route("/pay/closeorder", post(v2_close))
            .route("/v3/pay/transactions/out-trade-no/{no}", get(v3_query))
            .route(
                "/v3/pay/transactions/out-trade-no/{no}/close",
                post(v3_close),
            )
            .route("/gateway.do", post(alipay_gateway))
            .with_state(shared.clone());
        let (base, tx) = serve_stand_in(router).await;
        FakeProvider {
            base,
            state: shared.state,
            shutdown: Some(tx),
        }
    }

    /// Says `trade` about `out_trade_no` from now on.
    pub fn set(&self, out_trade_no: &str, trade: Trade) {
        self.lock().trades.insert(out_trade_no.into(), trade);
    }

    /// What it says about `out_trade_no` now.
    pub fn trade(&self, out_trade_no: &str) -> Option<Trade> {
        self.lock().trades.get(out_trade_no).cloned()
    }

    /// Signs answers about `out_trade_no` with a key the host does not know.
    pub fn bad_signature(&self, out_trade_no: &str) {
        self.lock().bad_signature.insert(out_trade_no.into());
    }

    /// Makes closing `out_trade_no` fail (`on`) or work again.
    pub fn failing_close(&self, out_trade_no: &str, on: bool) {
        let mut s = self.lock();
        if on {
            s.failing_close.insert(out_trade_no.into());
        } else {
            s.failing_close.remove(out_trade_no);
        }
    }

    /// Reads the recorded calls.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake provider state")
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake provider state")
    }

    fn trade(&self, no: &str) -> Option<Trade> {
        self.lock().trades.get(no).cloned()
    }

    fn signer(&self, no: &str, real: &RsaPrivateKey) -> RsaPrivateKey {
        if self.lock().bad_signature.contains(no) {
            self.keys.stranger.clone()
        } else {
            real.clone()
        }
    }

    fn bad_request(&self, what: String) {
        self.lock().bad_requests.push(what);
    }
}

fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

fn rsa_verify(key: &RsaPublicKey, message: &[u8], sig_b64: &str) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sig_b64) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(bytes.as_slice()) else {
        return false;
    };
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(message, &sig)
        .is_ok()
}

fn rsa_sign(key: &RsaPrivateKey, message: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(
        SigningKey::<Sha256>::new(key.clone())
            .sign(message)
            .to_bytes(),
    )
}

// ---- WeChat Pay v2 ----

/// Parses a v2 request and checks its MD5 signature.
fn v2_request(shared: &Shared, body: &[u8]) -> Option<BTreeMap<String, String>> {
    let fields = paynotify::providers::wechat_v2::parse_xml(body).ok()?;
    let sign = fields.get("sign").cloned().unwrap_or_default();
    let ok = wechat_v2::md5_sign(&fields, V2_API_KEY) == sign
        && fields.get("appid").map(String::as_str) == Some(V2_APPID)
        && fields.get("mch_id").map(String::as_str) == Some(V2_MCH_ID);
    if !ok {
        shared.bad_request(format!("v2 request: {}", String::from_utf8_lossy(body)));
        return None;
    }
    Some(fields)
}

fn v2_answer(shared: &Shared, no: &str, pairs: Vec<(&str, String)>) -> Response {
    let mut f: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in [
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", V2_APPID),
        ("mch_id", V2_MCH_ID),
    ] {
        f.insert(k.into(), v.into());
    }
    f.insert("nonce_str".into(), hex::encode(rand::random::<[u8; 8]>()));
    for (k, v) in pairs {
        f.insert(k.into(), v);
    }
    let key = if shared.lock().bad_signature.contains(no) {
        "n0tth3k3y000000000000000000000000"
    } else {
        V2_API_KEY
    };
    (
        [("content-type", "text/xml; charset=utf-8")],
        wechat_v2::xml(&f, key),
    )
        .into_response()
}

const V2_REFUSED: &str = "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[签名错误]]></return_msg></xml>";

async fn v2_query(State(shared): State<Shared>, body: Bytes) -> Response {
    let Some(req) = v2_request(&shared, &body) else {
        return V2_REFUSED.into_response();
    };
    let no = req.get("out_trade_no").cloned().unwrap_or_default();
    shared.lock().queries.push(("wechat-v2".into(), no.clone()));
    let pairs = match shared.trade(&no) {
        None => vec![
            ("result_code", "FAIL".into()),
            ("err_code", "ORDERNOTEXIST".into()),
            ("err_code_des", "order does not exist".into()),
        ],
        Some(Trade::Paid {
            fen,
            transaction_id,
        }) => vec![
            ("result_code", "SUCCESS".into()),
            ("out_trade_no", no.clone()),
            ("trade_state", "SUCCESS".into()),
            ("trade_state_desc", "支付成功".into()),
            ("transaction_id", transaction_id),
            ("total_fee", fen.to_string()),
            ("cash_fee", fen.to_string()),
            ("time_end", "20260903131540".into()),
            ("trade_type", "JSAPI".into()),
            ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE".into()),
            ("bank_type", "CFT".into()),
        ],
        Some(other) => vec![
            ("result_code", "SUCCESS".into()),
            ("out_trade_no", no.clone()),
            (
                "trade_state",
                if other == Trade::Closed {
                    "CLOSED"
                } else {
                    "NOTPAY"
                }
                .into(),
            ),
        ],
    };
    v2_answer(&shared, &no, pairs)
}

async fn v2_close(State(shared): State<Shared>, body: Bytes) -> Response {
    let Some(req) = v2_request(&shared, &body) else {
        return V2_REFUSED.into_response();
    };
    let no = req.get("out_trade_no").cloned().unwrap_or_default();
    let pairs = match close_decision(&shared, "wechat-v2", &no) {
        Close::Paid => vec![
            ("result_code", "FAIL".into()),
            ("err_code", "ORDERPAID".into()),
        ],
        Close::Fail => vec![
            ("result_code", "FAIL".into()),
            ("err_code", "SYSTEMERROR".into()),
        ],
        Close::Closed => vec![("result_code", "SUCCESS".into())],
    };
    v2_answer(&shared, &no, pairs)
}

enum Close {
    Paid,
    Fail,
    Closed,
}

/// Records the close call and decides: paid trades refuse, failing ones fail, others close.
fn close_decision(shared: &Shared, provider: &str, no: &str) -> Close {
    let mut s = shared.lock();
    s.closes.push((provider.into(), no.into()));
    if s.failing_close.contains(no) {
        return Close::Fail;
    }
    match s.trades.get(no) {
        Some(Trade::Paid { .. }) => Close::Paid,
        _ => {
            s.trades.insert(no.into(), Trade::Closed);
            Close::Closed
        }
    }
}

// ---- WeChat Pay v3 ----

/// Checks the `Authorization` of a v3 request over `METHOD\nPATH?QUERY\nTS\nNONCE\nBODY\n`.
fn v3_authorized(
    shared: &Shared,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &str,
) -> bool {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(params) = auth.strip_prefix("WECHATPAY2-SHA256-RSA2048 ") else {
        shared.bad_request(format!("v3 authorization scheme: {auth}"));
        return false;
    };
    let mut p = HashMap::new();
    for part in params.split(',') {
        if let Some((k, v)) = part.split_once('=') {
            p.insert(k.trim().to_owned(), v.trim().trim_matches('"').to_owned());
        }
    }
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let path = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("");
    let message = format!(
        "{method}\n{path}\n{}\n{}\n{body}\n",
        get("timestamp"),
        get("nonce_str")
    );
    let ok = get("mchid") == wechat_v3::MCH_ID_A
        && get("serial_no") == V3_MERCHANT_SERIAL
        && rsa_verify(&shared.keys.merchant, message.as_bytes(), &get("signature"));
    if !ok {
        shared.bad_request(format!("v3 request {method} {path}: {auth}"));
    }
    ok
}

fn v3_answer(shared: &Shared, no: &str, status: StatusCode, body: String) -> Response {
    let key = shared.signer(no, &shared.keys.wechatpay);
    wechat_v3::signed_answer(&key, wechat_v3::PUB_KEY_ID_A, status, body)
}

/// Serves `router` on a free loopback port, as a provider's stand-in: its base URL, and
/// the sender that stops it.
pub async fn serve_stand_in(router: axum::Router) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a provider stand-in");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    (format!("http://{addr}"), tx)
}

async fn v3_query(
    State(shared): State<Shared>,
    Path(no): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if !v3_authorized(&shared, "GET", &uri, &headers, "") {
        let body = json!({"code": "SIGN_ERROR", "message": "bad signature"}).to_string();
        return v3_answer(&shared, &no, StatusCode::UNAUTHORIZED, body);
    }
    shared.lock().queries.push(("wechat-v3".into(), no.clone()));
    let (appid, mchid) = (wechat_v3::APPID_A, wechat_v3::MCH_ID_A);
    let (status, body) = match shared.trade(&no) {
        None => (
            StatusCode::NOT_FOUND,
            json!({"code": "ORDER_NOT_EXIST", "message": "订单不存在"}),
        ),
        Some(Trade::Paid {
            fen,
            transaction_id,
        }) => (
            StatusCode::OK,
            wechat_v3::transaction(appid, mchid, &no, fen, &transaction_id, "SUCCESS"),
        ),
        Some(other) => {
            let state = if other == Trade::Closed {
                "CLOSED"
            } else {
                "NOTPAY"
            };
            let mut tx = wechat_v3::transaction(appid, mchid, &no, 0, "", state);
            if let Some(o) = tx.as_object_mut() {
                o.remove("transaction_id");
                o.remove("success_time");
                o.remove("payer");
            }
            (StatusCode::OK, tx)
        }
    };
    v3_answer(&shared, &no, status, body.to_string())
}

async fn v3_close(
    State(shared): State<Shared>,
    Path(no): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mchid_ok = serde_json::from_str::<Value>(&body)
        .ok()
        .is_some_and(|v| v["mchid"] == wechat_v3::MCH_ID_A);
    if !mchid_ok || !v3_authorized(&shared, "POST", &uri, &headers, &body) {
        let body = json!({"code": "SIGN_ERROR", "message": "bad signature"}).to_string();
        return v3_answer(&shared, &no, StatusCode::UNAUTHORIZED, body);
    }
    match close_decision(&shared, "wechat-v3", &no) {
        Close::Closed => v3_answer(&shared, &no, StatusCode::NO_CONTENT, String::new()),
        Close::Paid => v3_answer(
            &shared,
            &no,
            StatusCode::BAD_REQUEST,
            json!({"code": "ORDERPAID", "message": "订单已支付"}).to_string(),
        ),
        Close::Fail => v3_answer(
            &shared,
            &no,
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"code": "SYSTEM_ERROR", "message": "系统错误"}).to_string(),
        ),
    }
}

// ---- Alipay ----

async fn alipay_gateway(State(shared): State<Shared>, body: Bytes) -> Response {
    let params: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    // Requests are signed over every non-empty parameter but `sign`, sign_type included.
    let text = params
        .iter()
        .filter(|(k, v)| k.as_str() != "sign" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let method = get("method");
    let node = format!("{}_response", method.replace('.', "_"));
    let biz: Value = serde_json::from_str(&get("biz_content")).unwrap_or(Value::Null);
    let no = biz["out_trade_no"].as_str().unwrap_or("").to_owned();
    let signed_ok = rsa_verify(&shared.keys.app, text.as_bytes(), &get("sign"))
        && get("app_id") == crate::alipay::APP_ID_A
        && get("sign_type") == "RSA2";
    let inner = if !signed_ok {
        shared.bad_request(format!("alipay request: {text}"));
        json!({"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature", "sub_msg": "验签出错"})
    } else if method == "alipay.trade.query" {
        shared.lock().queries.push(("alipay".into(), no.clone()));
        match shared.trade(&no) {
            None => {
                json!({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_NOT_EXIST", "sub_msg": "交易不存在"})
            }
            Some(Trade::Paid {
                fen,
                transaction_id,
            }) => json!({
                "code": "10000", "msg": "Success", "trade_no": transaction_id, "out_trade_no": no,
                "buyer_logon_id": "159****5620", "trade_status": "TRADE_SUCCESS",
                "total_amount": yuan(fen), "buyer_pay_amount": yuan(fen),
                "send_pay_date": "2026-01-01 08:00:05", "buyer_user_id": "2088101117955611"
            }),
            Some(other) => json!({
                "code": "10000", "msg": "Success", "out_trade_no": no,
                "trade_status": if other == Trade::Closed { "TRADE_CLOSED" } else { "WAIT_BUYER_PAY" },
                "total_amount": "0.00"
            }),
        }
    } else if method == "alipay.trade.close" {
        match close_decision(&shared, "alipay", &no) {
            Close::Closed => json!({"code": "10000", "msg": "Success", "out_trade_no": no}),
            Close::Paid => {
                json!({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.TRADE_STATUS_ERROR", "sub_msg": "交易状态不合法"})
            }
            Close::Fail => {
                json!({"code": "20000", "msg": "Service Currently Unavailable", "sub_code": "aop.unknow-error", "sub_msg": "系统繁忙"})
            }
        }
    } else {
        json!({"code": "40004", "msg": "Business Failed", "sub_code": "ACQ.INVALID_METHOD"})
    };
    // Alipay signs the response node's text exactly as it appears in the body.
    let inner_text = inner.to_string();
    let key = shared.signer(&no, &shared.keys.alipay);
    let sign = rsa_sign(&key, inner_text.as_bytes());
    let body = format!("{{\"{node}\":{inner_text},\"sign\":\"{sign}\"}}");
    ([("content-type", "text/html;charset=utf-8")], body).into_response()
}
