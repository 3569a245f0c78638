//! WeChat Pay v3 partner mode (服务商) for the tests: a service provider serving two
//! sub-merchants, its transactions as WeChat Pay documents them, and a stand-in for the
//! partner order API (`GET /v3/pay/partner/transactions/out-trade-no/{no}`, `POST
//! …/{no}/close`) that checks each request's path, query, body and `Authorization` the way
//! WeChat Pay does and signs its answers with WeChat Pay's key.
//!
//! Notifications are built with [`crate::wechat_v3::body`] and signed with
//! [`crate::wechat_v3::headers`]: partner notifications are signed and encrypted for the
//! service provider exactly as a direct merchant's are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{fake_provider, wechat_v3};

/// The service provider's merchant id (服务商户号).
pub const SP_MCHID: &str = "1900000100";
/// The service provider's appid.
pub const SP_APPID: &str = "wx8888888888888888";
/// Sub-merchant A: paid through its own app.
pub const SUB_A: &str = "1900000109";
/// Sub-merchant A's own appid.
pub const SUB_APPID_A: &str = "wxd678efh567hg6999";
/// Sub-merchant B: no app of its own (paid through the service provider's).
pub const SUB_B: &str = "1900000110";

/// A partner transaction (the decrypted notification resource, or the query answer).
pub fn transaction(
    sp_mchid: &str,
    sub_mchid: &str,
    out_trade_no: &str,
    total: i64,
    transaction_id: &str,
) -> Value {
    let mut tx = json!({
        "sp_appid": SP_APPID,
        "sp_mchid": sp_mchid,
        "sub_mchid": sub_mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "attach": "",
        "success_time": "2026-01-01T08:00:00+08:00",
        "payer": { "sp_openid": "oUpF8uN95-Ptaags6E0mQPaeqQY", "sub_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
        "amount": { "total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY" }
    });
    if sub_mchid == SUB_A {
        tx["sub_appid"] = SUB_APPID_A.into();
    }
    tx
}

/// What the stand-in has seen and will say.
#[derive(Default)]
pub struct PartnerState {
    /// Paid trades by order number: (the sub-merchant they belong to, fen, transaction id).
    trades: HashMap<String, (String, i64, String)>,
    /// Answer with the trade whatever `sub_mchid` the query names (a provider, or someone
    /// on the network, answering about another sub-merchant's trade).
    pub ignore_sub_mchid: bool,
    /// Every query's path and query string, in order.
    pub queries: Vec<String>,
    /// Every close: (path, body).
    pub closes: Vec<(String, Value)>,
    /// Requests that were not what WeChat Pay accepts (there should be none).
    pub bad_requests: Vec<String>,
}

/// A running stand-in.
pub struct PartnerProvider {
    /// `http://127.0.0.1:PORT`, the partner account's `api_base`.
    pub base: String,
    state: Arc<Mutex<PartnerState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

type Shared = Arc<Mutex<PartnerState>>;

impl PartnerProvider {
    /// Starts it on a free loopback port.
    pub async fn start() -> PartnerProvider {
        let state: Shared = Arc::default();
        let router = Router::new()
            .route("/v3/pay/partner/transactions/out-trade-no/{no}", get(query))
            .route(
                "/v3/pay/partner/transactions/out-trade-no/{no}/close",
                post(close),
            )
            .with_state(state.clone());
        let (base, tx) = crate::fake_provider::serve_stand_in(router).await;
        PartnerProvider {
            base,
            state,
            shutdown: Some(tx),
        }
    }

    /// Says `no` was paid to `sub_mchid`, `fen` by `transaction_id`.
    pub fn paid(&self, no: &str, sub_mchid: &str, fen: i64, transaction_id: &str) {
        self.lock()
            .trades
            .insert(no.into(), (sub_mchid.into(), fen, transaction_id.into()));
    }

    /// What it has seen.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, PartnerState> {
        self.state.lock().expect("partner stand-in state")
    }
}

impl Drop for PartnerProvider {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Checks `Authorization` over `METHOD\nPATH?QUERY\nTS\nNONCE\nBODY\n`: the service
/// provider's mchid, its merchant certificate serial, its merchant key's signature.
fn authorized(state: &Shared, method: &str, uri: &Uri, headers: &HeaderMap, body: &str) -> bool {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let params: HashMap<String, String> = auth
        .strip_prefix("WECHATPAY2-SHA256-RSA2048 ")
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect();
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let path = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("");
    let message = format!(
        "{method}\n{path}\n{}\n{}\n{body}\n",
        get("timestamp"),
        get("nonce_str")
    );
    let signature_ok = base64::engine::general_purpose::STANDARD
        .decode(get("signature"))
        .ok()
        .and_then(|b| Signature::try_from(b.as_slice()).ok())
        .is_some_and(|sig| {
            let key = fake_provider::host_keys().0.to_public_key();
            VerifyingKey::<Sha256>::new(key)
                .verify(message.as_bytes(), &sig)
                .is_ok()
        });
    let ok = get("mchid") == SP_MCHID
        && get("serial_no") == fake_provider::V3_MERCHANT_SERIAL
        && signature_ok;
    if !ok {
        let mut s = state.lock().expect("state");
        s.bad_requests.push(format!("{method} {path}: {auth}"));
    }
    ok
}

/// An answer signed by WeChat Pay (its public key is `PUB_KEY_ID_A` at the host).
fn answer(status: StatusCode, body: String) -> Response {
    wechat_v3::signed_answer(&wechat_v3::keys()[0], wechat_v3::PUB_KEY_ID_A, status, body)
}

fn refused(why: &str) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        json!({"code": "PARAM_ERROR", "message": why}).to_string(),
    )
}

async fn query(
    State(state): State<Shared>,
    Path(no): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|pq| pq.to_string())
        .unwrap_or_default();
    if !authorized(&state, "GET", &uri, &headers, "") {
        return refused("bad signature");
    }
    let params: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let mut s = state.lock().expect("state");
    s.queries.push(path.clone());
    let (Some(sp), Some(sub)) = (params.get("sp_mchid"), params.get("sub_mchid")) else {
        s.bad_requests
            .push(format!("query without sp_mchid and sub_mchid: {path}"));
        return refused("sp_mchid and sub_mchid are required");
    };
    if sp != SP_MCHID {
        s.bad_requests
            .push(format!("query for another service provider: {path}"));
        return refused("sp_mchid");
    }
    // WeChat Pay keeps order numbers per sub-merchant: another one's trade is not found.
    let trade = s
        .trades
        .get(&no)
        .filter(|(owner, ..)| s.ignore_sub_mchid || owner == sub)
        .cloned();
    drop(s);
    match trade {
        None => answer(
            StatusCode::NOT_FOUND,
            json!({"code": "ORDER_NOT_EXIST", "message": "订单不存在"}).to_string(),
        ),
        Some((owner, fen, transaction_id)) => answer(
            StatusCode::OK,
            transaction(SP_MCHID, &owner, &no, fen, &transaction_id).to_string(),
        ),
    }
}

async fn close(
    State(state): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    if !authorized(&state, "POST", &uri, &headers, &body) {
        return refused("bad signature");
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut s = state.lock().expect("state");
    s.closes.push((uri.path().to_owned(), v.clone()));
    if v["sp_mchid"] != SP_MCHID || !v["sub_mchid"].is_string() {
        s.bad_requests.push(format!("close body: {body}"));
        return refused("sp_mchid and sub_mchid are required");
    }
    answer(StatusCode::NO_CONTENT, String::new())
}
