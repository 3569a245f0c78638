//! Placing payments and starting refunds with WeChat Pay v3 (issue 24), end to end: the
//! real server with the real `recharge` handler, calling a stand-in of WeChat Pay's
//! payment and refund API ([`PayStandIn`]) that checks every request's `Authorization`
//! signature and fields as WeChat Pay does and signs its answers with WeChat Pay's key.
//! A direct merchant (`a`) and a service provider (`sp`, 服务商) with two sub-merchants.
//!
//! The client parameters are checked here independently of the host: `paySign` and the
//! APP `sign` are verified with the merchant's public key over the lines WeChat
//! documents. Refunds are settled by the refund notification WeChat Pay then sends, built
//! by this crate's own signer and encrypter.

use paynotify::store::{status, Verdict};
use paynotify_tests::pay_wechat_v3::{rfc3339_secs, PayStandIn};
use paynotify_tests::wechat_v3_partner::{
    self as partner, SP_APPID, SP_MCHID, SUB_A, SUB_APPID_A, SUB_B,
};
use paynotify_tests::{fake_provider, wechat_v3, Options, TestServer};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::signature::Verifier;
use serde_json::{json, Value};
use sha2::Sha256;

/// The host's public address (`server.public_base_url`).
const PUBLIC: &str = "https://pay.example.com";

/// How long WeChat is told the order may be paid (`orders.pay_expire_secs`).
const PAY_EXPIRE_SECS: i64 = 1800;

/// A server whose v3 accounts call `stand_in`: direct `a`, partner `sp` (sub-merchant A
/// with its own app, B without), and `nokey`, a direct account without a merchant key.
async fn server(stand_in: &PayStandIn, keys: &tempfile::TempDir) -> TestServer {
    let k = wechat_v3::keys();
    let write = |name: &str, text: String| {
        let path = keys.path().join(name);
        std::fs::write(&path, text).expect("write key");
        path.display().to_string()
    };
    let wechatpay_pub = write("wechatpay_pub.pem", wechat_v3::public_key_pem(&k[0]));
    let merchant_key = write(
        "apiclient_key.pem",
        fake_provider::host_keys()
            .0
            .to_pkcs8_pem(LineEnding::LF)
            .expect("pem")
            .to_string(),
    );
    let config = format!(
        r#"
[[accounts]]
provider = "wechat-v3"
name = "a"
appid = "{appid_a}"
mch_id = "{mch_a}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id}" = "{wechatpay_pub}" }}
merchant_private_key_file = "{merchant_key}"
merchant_serial_no = "{serial}"
api_base = "{base}"

[[accounts]]
provider = "wechat-v3"
name = "sp"
mode = "partner"
sp_mchid = "{sp_mchid}"
sp_appid = "{sp_appid}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id}" = "{wechatpay_pub}" }}
merchant_private_key_file = "{merchant_key}"
merchant_serial_no = "{serial}"
api_base = "{base}"

[[accounts.sub_merchants]]
sub_mchid = "{sub_a}"
sub_appid = "{sub_appid_a}"

[[accounts.sub_merchants]]
sub_mchid = "{sub_b}"

[[accounts]]
provider = "wechat-v3"
name = "nokey"
appid = "{appid_b}"
mch_id = "{mch_b}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id}" = "{wechatpay_pub}" }}
api_base = "{base}"

[orders]
expire_after_secs = 7200
pay_expire_secs = {PAY_EXPIRE_SECS}
"#,
        appid_a = wechat_v3::APPID_A,
        mch_a = wechat_v3::MCH_ID_A,
        appid_b = wechat_v3::APPID_B,
        mch_b = wechat_v3::MCH_ID_B,
        v3key = wechat_v3::API_V3_KEY,
        pub_id = wechat_v3::PUB_KEY_ID_A,
        serial = fake_provider::V3_MERCHANT_SERIAL,
        base = stand_in.base,
        sp_mchid = SP_MCHID,
        sp_appid = SP_APPID,
        sub_a = SUB_A,
        sub_appid_a = SUB_APPID_A,
        sub_b = SUB_B,
    );
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = config;
    options.server_config = format!("public_base_url = \"{PUBLIC}\"");
    TestServer::start(options).await
}

/// A recharge order of `fen` for `user` on `account` (and `sub_mchid`), with `pay`.
fn order(
    account: &str,
    sub_mchid: Option<&str>,
    no: &str,
    user: &str,
    fen: i64,
    pay: Value,
) -> Value {
    let mut body = json!({
        "type": "recharge", "total_fee": fen, "user_id": user, "provider": "wechat-v3",
        "account": account, "out_trade_no": no, "custom": { "recharge_balance": fen },
        "pay": pay
    });
    if let Some(sub) = sub_mchid {
        body["sub_mchid"] = sub.into();
    }
    body
}

/// Whether `sig` is the merchant key's SHA256withRSA over `lines`, each followed by `\n`
/// (WeChat's JSAPI `paySign` and APP `sign`), checked with the merchant's PUBLIC key.
fn merchant_signed(lines: &[&str], sig: &str) -> bool {
    use base64::Engine as _;
    let message: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sig) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(bytes.as_slice()) else {
        return false;
    };
    VerifyingKey::<Sha256>::new(fake_provider::host_keys().0.to_public_key())
        .verify(message.as_bytes(), &sig)
        .is_ok()
}

/// A string field of `v`.
fn str_at<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no `{key}` in {v}"))
}

/// Checks JSAPI client parameters: `appId`, a fresh timestamp, the prepay id, and a
/// `paySign` the merchant's public key verifies.
fn check_jsapi(payment: &Value, app_id: &str, prepay_id: &str) {
    assert_eq!(str_at(payment, "appId"), app_id, "{payment}");
    assert_eq!(str_at(payment, "package"), format!("prepay_id={prepay_id}"));
    assert_eq!(str_at(payment, "signType"), "RSA");
    let ts: i64 = str_at(payment, "timeStamp")
        .parse()
        .expect("timeStamp is unix seconds");
    assert!((ts - wechat_v3::now()).abs() < 60, "{payment}");
    assert!(!str_at(payment, "nonceStr").is_empty());
    let lines = [
        str_at(payment, "appId"),
        str_at(payment, "timeStamp"),
        str_at(payment, "nonceStr"),
        str_at(payment, "package"),
    ];
    assert!(
        merchant_signed(&lines, str_at(payment, "paySign")),
        "paySign: {payment}"
    );
    // The signature covers the prepay id: the same one over another does not verify.
    let other = format!("prepay_id={prepay_id}x");
    assert!(!merchant_signed(
        &[lines[0], lines[1], lines[2], other.as_str()],
        str_at(payment, "paySign")
    ));
}

/// Checks APP client parameters.
fn check_app(payment: &Value, appid: &str, partnerid: &str, prepay_id: &str) {
    assert_eq!(
        (
            str_at(payment, "appid"),
            str_at(payment, "partnerid"),
            str_at(payment, "prepayid"),
            str_at(payment, "package")
        ),
        (appid, partnerid, prepay_id, "Sign=WXPay"),
        "{payment}"
    );
    let lines = [
        str_at(payment, "appid"),
        str_at(payment, "timestamp"),
        str_at(payment, "noncestr"),
        str_at(payment, "prepayid"),
    ];
    assert!(
        merchant_signed(&lines, str_at(payment, "sign")),
        "sign: {payment}"
    );
}

/// The order as the stored `GET /api/orders/{no}` shows it: (status, transaction id).
async fn state(s: &TestServer, no: &str) -> (i32, Option<String>) {
    let o = s.order(no).await;
    (o.status, o.transaction_id)
}

/// Sends WeChat Pay's signed notification `body` to `/notify/wechat-v3/{account}`.
async fn notify(s: &TestServer, account: &str, body: String) -> (u16, String) {
    let k = wechat_v3::keys();
    let h = wechat_v3::headers(&k[0], wechat_v3::PUB_KEY_ID_A, wechat_v3::now(), &body);
    s.notify_with_headers(
        &format!("/notify/wechat-v3/{account}"),
        "application/json",
        &h,
        body,
    )
    .await
}

async fn balance(s: &TestServer, user: &str) -> Option<i64> {
    s.document("users", user)
        .await
        .and_then(|d| d["balance"].as_i64())
}

/// The time WeChat was told the order expires, checked to be `PAY_EXPIRE_SECS` from now.
fn check_expiry(body: &Value) {
    let t = str_at(body, "time_expire");
    assert!(t.ends_with("+08:00"), "China time: {t}");
    let at = rfc3339_secs(t).expect("RFC 3339");
    let want = wechat_v3::now() + PAY_EXPIRE_SECS;
    assert!(
        (at - want).abs() < 60,
        "time_expire {t} is not ~{PAY_EXPIRE_SECS} s from now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_direct_merchant_places_each_method_and_the_client_parameters_verify() {
    let stand_in = PayStandIn::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys).await;
    let notify_url = format!("{PUBLIC}/notify/wechat-v3/a");
    let mchid = wechat_v3::MCH_ID_A;

    // JSAPI: wx.requestPayment parameters signed with the merchant key.
    let pay = json!({ "method": "jsapi", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "description": "充值 12.34" });
    let v = s
        .create_order(order("a", None, "PV3-JSAPI", "u1", 1234, pay.clone()))
        .await;
    let held = stand_in
        .order(mchid, "PV3-JSAPI")
        .expect("placed at WeChat");
    check_jsapi(&v["payment"], wechat_v3::APPID_A, &held.prepay_id);
    assert_eq!(v["status"], 0, "{v}");
    let sent = stand_in.lock().bodies("/v3/pay/transactions/jsapi");
    assert_eq!(sent.len(), 1);
    let body = &sent[0];
    assert_eq!(
        (
            str_at(body, "appid"),
            str_at(body, "mchid"),
            str_at(body, "out_trade_no"),
            str_at(body, "description"),
            str_at(body, "notify_url")
        ),
        (
            wechat_v3::APPID_A,
            mchid,
            "PV3-JSAPI",
            "充值 12.34",
            notify_url.as_str()
        )
    );
    assert_eq!(body["amount"], json!({ "total": 1234, "currency": "CNY" }));
    assert_eq!(
        body["payer"],
        json!({ "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" })
    );
    check_expiry(body);

    // The same order again (a client retrying): WeChat's same prepay id, signed afresh.
    let (code, again) = s
        .api(
            "POST",
            "/api/orders",
            Some(order("a", None, "PV3-JSAPI", "u1", 1234, pay.clone())),
        )
        .await;
    assert_eq!(code, 201, "{again}");
    check_jsapi(&again["payment"], wechat_v3::APPID_A, &held.prepay_id);
    // The same number for another order (another user, amount or custom) is no retry:
    // 409, nothing sent.
    let sent = stand_in.lock().received.len();
    let mut other = order("a", None, "PV3-JSAPI", "u1", 1234, pay.clone());
    other["custom"] = json!({ "recharge_balance": 99_999 });
    for body in [
        order("a", None, "PV3-JSAPI", "u2", 1234, pay.clone()),
        other,
    ] {
        let (code, v) = s.api("POST", "/api/orders", Some(body)).await;
        assert_eq!(code, 409, "{v}");
    }
    assert_eq!(stand_in.lock().received.len(), sent, "nothing sent");
    // And placed again as it was last placed, by number alone.
    let (code, again) = s.api("POST", "/api/orders/PV3-JSAPI/pay", None).await;
    assert_eq!(code, 200, "{again}");
    check_jsapi(&again["payment"], wechat_v3::APPID_A, &held.prepay_id);
    // The same number for another amount is another order: refused here, nothing sent.
    let sent_before = stand_in.lock().received.len();
    let (code, v2) = s
        .api(
            "POST",
            "/api/orders",
            Some(order(
                "a",
                None,
                "PV3-JSAPI",
                "u1",
                999,
                json!({ "method": "native" }),
            )),
        )
        .await;
    assert_eq!(code, 409, "{v2}");
    assert_eq!(stand_in.lock().received.len(), sent_before);

    // Native: the code_url to show as a QR code.
    let v = s
        .create_order(order(
            "a",
            None,
            "PV3-NATIVE",
            "u2",
            500,
            json!({ "method": "native" }),
        ))
        .await;
    let held = stand_in.order(mchid, "PV3-NATIVE").expect("placed");
    assert_eq!(
        v["payment"],
        json!({ "code_url": format!("weixin://wxpay/bizpayurl?pr={}", held.prepay_id) })
    );
    let body = &stand_in.lock().bodies("/v3/pay/transactions/native")[0].clone();
    assert!(
        body.get("payer").is_none() && body.get("scene_info").is_none(),
        "{body}"
    );
    assert_eq!(
        str_at(body, "description"),
        "recharge",
        "the order's type by default"
    );

    // H5: the buyer's IP and the scene WeChat wants.
    let pay = json!({ "method": "h5", "client_ip": "203.0.113.7" });
    let v = s
        .create_order(order("a", None, "PV3-H5", "u3", 600, pay))
        .await;
    assert!(
        str_at(&v["payment"], "h5_url").starts_with("https://wx.tenpay.com/"),
        "{v}"
    );
    let body = &stand_in.lock().bodies("/v3/pay/transactions/h5")[0].clone();
    assert_eq!(
        body["scene_info"],
        json!({ "payer_client_ip": "203.0.113.7", "h5_info": { "type": "Wap" } })
    );

    // APP: the SDK's PayReq, signed.
    let v = s
        .create_order(order(
            "a",
            None,
            "PV3-APP",
            "u4",
            700,
            json!({ "method": "app", "client_ip": "198.51.100.2" }),
        ))
        .await;
    let held = stand_in.order(mchid, "PV3-APP").expect("placed");
    check_app(&v["payment"], wechat_v3::APPID_A, mchid, &held.prepay_id);
    let body = &stand_in.lock().bodies("/v3/pay/transactions/app")[0].clone();
    assert_eq!(
        body["scene_info"],
        json!({ "payer_client_ip": "198.51.100.2" })
    );

    assert_eq!(stand_in.lock().bad_requests, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_before_anything_is_sent() {
    let stand_in = PayStandIn::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys).await;
    let cases = [
        ("a", None, json!({ "method": "MWEB" }), "pay.method"),
        ("a", None, json!({ "method": "jsapi" }), "pay.openid"),
        ("a", None, json!({ "method": "h5" }), "pay.client_ip"),
        (
            "a",
            None,
            json!({ "method": "h5", "client_ip": "local" }),
            "pay.client_ip",
        ),
        (
            "a",
            None,
            json!({ "method": "jsapi", "sub_openid": "o-1" }),
            "pay.sub_openid",
        ),
        (
            "sp",
            Some(SUB_A),
            json!({ "method": "jsapi" }),
            "pay.openid",
        ),
        (
            "sp",
            Some(SUB_A),
            json!({ "method": "jsapi", "openid": "o", "sub_openid": "o" }),
            "pay.sub_openid",
        ),
        (
            "a",
            None,
            json!({ "method": "native", "description": "x".repeat(128) }),
            "pay.description",
        ),
        ("nokey", None, json!({ "method": "native" }), "pay"),
    ];
    for (i, (account, sub, pay, field)) in cases.into_iter().enumerate() {
        let no = format!("PV3-BAD-{i}");
        let (code, v) = s
            .api(
                "POST",
                "/api/orders",
                Some(order(account, sub, &no, "u", 100, pay.clone())),
            )
            .await;
        assert_eq!(code, 422, "{pay}: {v}");
        assert!(
            str_at(&v, "error").contains(field),
            "{pay}: {v} should name {field}"
        );
        // Nothing was stored either: the checks run before the order is.
        let (code, _) = s.api("GET", &format!("/api/orders/{no}"), None).await;
        assert_eq!(code, 404, "{pay}");
    }
    let (code, v) = s
        .api(
            "POST",
            "/api/orders",
            Some(order(
                "nokey",
                None,
                "PV3-BAD-K",
                "u",
                100,
                json!({ "method": "native" }),
            )),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    assert!(
        str_at(&v, "error").contains("merchant") || str_at(&v, "error").contains("credentials"),
        "{v}"
    );
    // An order stored without `pay` is placed with a bad one later: 422 too.
    s.create_order(json!({
        "type": "recharge", "total_fee": 100, "user_id": "u", "provider": "wechat-v3",
        "account": "a", "out_trade_no": "PV3-LATER"
    }))
    .await;
    let (code, v) = s
        .api(
            "POST",
            "/api/orders/PV3-LATER/pay",
            Some(json!({ "pay": { "method": "h5" } })),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    assert!(str_at(&v, "error").contains("pay.client_ip"), "{v}");
    let (code, v) = s.api("POST", "/api/orders/PV3-LATER/pay", None).await;
    assert_eq!(code, 422, "never placed: {v}");
    let st = stand_in.lock();
    assert!(st.received.is_empty(), "sent: {:?}", st.received);
    assert!(st.bad_requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_and_unsigned_answers_leave_the_order_unplaced_and_a_retry_places_it() {
    let stand_in = PayStandIn::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys).await;
    let pay = json!({ "method": "jsapi", "openid": "o-r" });
    let body = order("a", None, "PV3-REFUSED", "ur", 800, pay.clone());

    // WeChat refuses: 502 with its code and message; the order is stored, unplaced.
    stand_in.refuse(
        "PV3-REFUSED",
        "NO_AUTH",
        "商户号该产品权限未开通，请前往商户平台>产品中心检查后重试",
    );
    let (code, v) = s.api("POST", "/api/orders", Some(body.clone())).await;
    assert_eq!(code, 502, "{v}");
    assert_eq!(str_at(&v, "code"), "NO_AUTH", "{v}");
    assert!(
        str_at(&v, "message").starts_with("商户号该产品权限未开通"),
        "{v}"
    );
    assert_eq!(v["order"]["out_trade_no"], "PV3-REFUSED", "{v}");
    assert!(v.get("payment").is_none());
    assert_eq!(state(&s, "PV3-REFUSED").await, (status::UNPAID, None));

    // Answers signed by someone else are not believed, whatever they say.
    stand_in.accept("PV3-REFUSED");
    stand_in.bad_signature("PV3-REFUSED");
    let (code, v) = s.api("POST", "/api/orders", Some(body.clone())).await;
    assert_eq!(code, 502, "{v}");
    assert!(v.get("code").is_none() && v.get("payment").is_none(), "{v}");
    assert!(str_at(&v, "error").contains("answer refused"), "{v}");
    let (code, v) = s.api("POST", "/api/orders/PV3-REFUSED/pay", None).await;
    assert_eq!(code, 502, "{v}");

    // Retrying the same number once WeChat answers properly: placed, WeChat's one
    // prepay id for the order.
    stand_in.accept("PV3-REFUSED");
    let (code, v) = s.api("POST", "/api/orders", Some(body)).await;
    assert_eq!(code, 201, "{v}");
    let held = stand_in
        .order(wechat_v3::MCH_ID_A, "PV3-REFUSED")
        .expect("held");
    check_jsapi(&v["payment"], wechat_v3::APPID_A, &held.prepay_id);
    // Four tries reached WeChat (refused, twice unverifiable, placed): one order there.
    assert_eq!(
        stand_in.lock().bodies("/v3/pay/transactions/jsapi").len(),
        4
    );
    assert_eq!(state(&s, "PV3-REFUSED").await, (status::UNPAID, None));
    assert_eq!(stand_in.lock().bad_requests, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_start_at_wechat_and_settle_once_by_the_refund_notification() {
    let stand_in = PayStandIn::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys).await;
    let no = "PV3-REFUND";
    s.create_order(order(
        "a",
        None,
        no,
        "ur",
        1000,
        json!({ "method": "native" }),
    ))
    .await;
    // Not paid yet: nothing to refund.
    let (code, v) = s
        .api(
            "POST",
            &format!("/api/orders/{no}/refunds"),
            Some(json!({ "amount": 100 })),
        )
        .await;
    assert_eq!(code, 409, "{v}");
    // The buyer pays; WeChat notifies.
    stand_in.paid(wechat_v3::MCH_ID_A, no, "4200000901");
    let tx = wechat_v3::transaction(
        wechat_v3::APPID_A,
        wechat_v3::MCH_ID_A,
        no,
        1000,
        "4200000901",
        "SUCCESS",
    );
    let (code, b) = notify(
        &s,
        "a",
        wechat_v3::body("TRANSACTION.SUCCESS", &tx, wechat_v3::API_V3_KEY),
    )
    .await;
    assert_eq!(code, 204, "{b}");
    assert_eq!(balance(&s, "ur").await, Some(1000));

    // More than was paid: refused here, nothing sent.
    let refunds = format!("/api/orders/{no}/refunds");
    let (code, v) = s
        .api("POST", &refunds, Some(json!({ "amount": 1001 })))
        .await;
    assert_eq!(code, 422, "{v}");
    assert!(stand_in.lock().bodies("/refunds").is_empty());

    // Accepted by WeChat (PROCESSING): requested here, not settled yet.
    let ask = json!({ "amount": 300, "out_refund_no": "RF-V3-1", "reason": "缺货" });
    let (code, v) = s.api("POST", &refunds, Some(ask.clone())).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(str_at(&v, "state"), "accepted", "{v}");
    let held = stand_in.lock().refunds["RF-V3-1"].clone();
    assert_eq!(str_at(&v, "refund_id"), held.refund_id);
    let sent = stand_in.lock().bodies("/v3/refund/domestic/refunds");
    assert_eq!(
        sent,
        vec![json!({
            "transaction_id": "4200000901", "out_refund_no": "RF-V3-1", "reason": "缺货",
            "notify_url": format!("{PUBLIC}/notify/wechat-v3/a"),
            "amount": { "refund": 300, "total": 1000, "currency": "CNY" }
        })]
    );
    assert_eq!(state(&s, no).await.0, status::PAID);
    // The same refund number again is the same refund.
    let (code, v) = s.api("POST", &refunds, Some(ask.clone())).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (str_at(&v, "state"), v["created"].as_bool()),
        ("accepted", Some(false))
    );
    assert_eq!(stand_in.lock().refunds.len(), 1);

    // WeChat's refund notification settles it, once however often it comes.
    let refund = wechat_v3::refund(
        wechat_v3::MCH_ID_A,
        no,
        "RF-V3-1",
        1000,
        300,
        "4200000901",
        "SUCCESS",
    );
    let body = wechat_v3::refund_body("REFUND.SUCCESS", &refund, wechat_v3::API_V3_KEY);
    for _ in 0..2 {
        let (code, b) = notify(&s, "a", body.clone()).await;
        assert_eq!(code, 204, "{b}");
    }
    let verdicts: Vec<Verdict> = s
        .notifications_of("wechat-v3")
        .await
        .iter()
        .map(|n| n.verdict)
        .collect();
    assert_eq!(
        verdicts.iter().filter(|v| **v == Verdict::Refunded).count(),
        1,
        "{verdicts:?}"
    );
    let o = s.order(no).await;
    assert_eq!((o.status, o.refund_fee), (status::PARTIALLY_REFUNDED, 300));
    assert_eq!(balance(&s, "ur").await, Some(700));
    let (code, v) = s.api("GET", &refunds, None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["refunds"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["requests"][0]["state"], "settled", "{v}");
    // Asked again once settled: the settled request, nothing sent.
    let before = stand_in.lock().received.len();
    let (code, v) = s.api("POST", &refunds, Some(ask)).await;
    assert_eq!((code, str_at(&v, "state")), (200, "settled"), "{v}");
    assert_eq!(stand_in.lock().received.len(), before);

    // Refused by WeChat: 502 with its code, the amount free again.
    stand_in.refuse(
        "RF-V3-2",
        "NOT_ENOUGH",
        "基本账户余额不足，请充值后重新发起",
    );
    let (code, v) = s
        .api(
            "POST",
            &refunds,
            Some(json!({ "amount": 700, "out_refund_no": "RF-V3-2" })),
        )
        .await;
    assert_eq!((code, str_at(&v, "code")), (502, "NOT_ENOUGH"), "{v}");
    // An answer nobody can verify: 502, outcome unknown, the request stays requested.
    stand_in.bad_signature("RF-V3-3");
    let (code, v) = s
        .api(
            "POST",
            &refunds,
            Some(json!({ "amount": 700, "out_refund_no": "RF-V3-3" })),
        )
        .await;
    assert_eq!(code, 502, "{v}");
    assert!(v.get("code").is_none(), "{v}");
    let (_, v) = s.api("GET", &refunds, None).await;
    let states: Vec<&str> = v["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| str_at(r, "state"))
        .collect();
    assert_eq!(states, ["settled", "failed", "requested"], "{v}");
    // WeChat's system error says "the same call again": the refund may have been taken,
    // so it is no refusal and the request (and its amount) stays requested.
    stand_in.accept("RF-V3-3");
    stand_in.refuse("RF-V3-3", "SYSTEM_ERROR", "系统错误");
    let (code, v) = s
        .api(
            "POST",
            &refunds,
            Some(json!({ "amount": 700, "out_refund_no": "RF-V3-3" })),
        )
        .await;
    assert_eq!((code, str_at(&v, "code")), (502, "SYSTEM_ERROR"), "{v}");
    let (_, v) = s.api("GET", &refunds, None).await;
    assert_eq!(v["requests"][2]["state"], "requested", "{v}");
    // The same number sent again once WeChat's answer verifies: accepted, then settled.
    stand_in.accept("RF-V3-3");
    let (code, v) = s
        .api(
            "POST",
            &refunds,
            Some(json!({ "amount": 700, "out_refund_no": "RF-V3-3" })),
        )
        .await;
    assert_eq!((code, str_at(&v, "state")), (200, "accepted"), "{v}");
    let refund = wechat_v3::refund(
        wechat_v3::MCH_ID_A,
        no,
        "RF-V3-3",
        1000,
        700,
        "4200000901",
        "SUCCESS",
    );
    let (code, b) = notify(
        &s,
        "a",
        wechat_v3::refund_body("REFUND.SUCCESS", &refund, wechat_v3::API_V3_KEY),
    )
    .await;
    assert_eq!(code, 204, "{b}");
    let o = s.order(no).await;
    assert_eq!((o.status, o.refund_fee), (status::REFUNDED, 1000));
    assert_eq!(balance(&s, "ur").await, Some(0));
    let (_, v) = s.api("GET", &refunds, None).await;
    let states: Vec<&str> = v["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| str_at(r, "state"))
        .collect();
    assert_eq!(states, ["settled", "failed", "settled"], "{v}");
    // WeChat was asked for exactly 300 + 700 (RF-V3-2 was refused there).
    let asked: i64 = stand_in.lock().refunds.values().map(|r| r.refund).sum();
    assert_eq!(asked, 1000);
    assert_eq!(stand_in.lock().bad_requests, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_an_unpaid_order_closes_it_at_wechat_and_a_paid_one_is_refused() {
    let stand_in = PayStandIn::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys).await;
    s.create_order(order(
        "a",
        None,
        "PV3-CLOSE",
        "uc",
        100,
        json!({ "method": "native" }),
    ))
    .await;
    let (code, v) = s.api("POST", "/api/orders/PV3-CLOSE/close", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["closed_at_provider"], true, "{v}");
    assert!(
        stand_in
            .order(wechat_v3::MCH_ID_A, "PV3-CLOSE")
            .expect("held")
            .closed
    );
    assert_eq!(state(&s, "PV3-CLOSE").await.0, status::CLOSED);
    // A closed order is not placed again.
    let (code, v) = s.api("POST", "/api/orders/PV3-CLOSE/pay", None).await;
    assert_eq!(code, 409, "{v}");

    s.create_order(order(
        "a",
        None,
        "PV3-PAID",
        "uc",
        100,
        json!({ "method": "native" }),
    ))
    .await;
    stand_in.paid(wechat_v3::MCH_ID_A, "PV3-PAID", "4200000902");
    let tx = wechat_v3::transaction(
        wechat_v3::APPID_A,
        wechat_v3::MCH_ID_A,
        "PV3-PAID",
        100,
        "4200000902",
        "SUCCESS",
    );
    let (code, b) = notify(
        &s,
        "a",
        wechat_v3::body("TRANSACTION.SUCCESS", &tx, wechat_v3::API_V3_KEY),
    )
    .await;
    assert_eq!(code, 204, "{b}");
    let (code, v) = s.api("POST", "/api/orders/PV3-PAID/close", None).await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = s.api("POST", "/api/orders/PV3-PAID/pay", None).await;
    assert_eq!(code, 409, "{v}");
    let closes = stand_in.lock().bodies("/close");
    assert_eq!(closes, vec![json!({ "mchid": wechat_v3::MCH_ID_A })]);
    assert_eq!(state(&s, "PV3-PAID").await.0, status::PAID);
    assert_eq!(stand_in.lock().bad_requests, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partner_places_refunds_and_closes_for_its_sub_merchants() {
    let stand_in = PayStandIn::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys).await;
    let notify_url = format!("{PUBLIC}/notify/wechat-v3/sp");

    // Sub-merchant A's buyer, in A's own app (sub_openid): appId is A's.
    let pay = json!({ "method": "jsapi", "sub_openid": "o-sub-a" });
    let v = s
        .create_order(order("sp", Some(SUB_A), "PSP-A-JSAPI", "pa", 900, pay))
        .await;
    let held = stand_in.order(SP_MCHID, "PSP-A-JSAPI").expect("held");
    assert_eq!(held.sub_mchid.as_deref(), Some(SUB_A));
    check_jsapi(&v["payment"], SUB_APPID_A, &held.prepay_id);
    let body = stand_in.lock().bodies("/v3/pay/partner/transactions/jsapi")[0].clone();
    assert_eq!(
        (
            str_at(&body, "sp_appid"),
            str_at(&body, "sp_mchid"),
            str_at(&body, "sub_appid"),
            str_at(&body, "sub_mchid")
        ),
        (SP_APPID, SP_MCHID, SUB_APPID_A, SUB_A)
    );
    assert_eq!(body["payer"], json!({ "sub_openid": "o-sub-a" }));
    assert_eq!(str_at(&body, "notify_url"), notify_url);
    check_expiry(&body);

    // Sub-merchant B (no app of its own): the service provider's openid and appId.
    let pay = json!({ "method": "jsapi", "openid": "o-sp" });
    let v = s
        .create_order(order("sp", Some(SUB_B), "PSP-B-JSAPI", "pb", 400, pay))
        .await;
    let held = stand_in.order(SP_MCHID, "PSP-B-JSAPI").expect("held");
    check_jsapi(&v["payment"], SP_APPID, &held.prepay_id);
    let body = stand_in.lock().bodies("/v3/pay/partner/transactions/jsapi")[1].clone();
    assert!(body.get("sub_appid").is_none(), "{body}");
    assert_eq!(body["payer"], json!({ "sp_openid": "o-sp" }));
    // B cannot be paid with a sub_openid: there is no app of B's to have one under.
    let pay = json!({ "method": "jsapi", "sub_openid": "o-sub-b" });
    let (code, v) = s
        .api(
            "POST",
            "/api/orders",
            Some(order("sp", Some(SUB_B), "PSP-B-SUB", "pb", 400, pay)),
        )
        .await;
    assert_eq!(code, 502, "{v}");
    assert!(str_at(&v, "error").contains("sub_appid"), "{v}");

    // APP for A: A's app, partnerid the sub-merchant.
    let v = s
        .create_order(order(
            "sp",
            Some(SUB_A),
            "PSP-A-APP",
            "pa",
            300,
            json!({ "method": "app" }),
        ))
        .await;
    let held = stand_in.order(SP_MCHID, "PSP-A-APP").expect("held");
    check_app(&v["payment"], SUB_APPID_A, SUB_A, &held.prepay_id);

    // Refund A's paid order; A's refund notification settles it.
    stand_in.paid(SP_MCHID, "PSP-A-JSAPI", "4200000903");
    let tx = partner::transaction(SP_MCHID, SUB_A, "PSP-A-JSAPI", 900, "4200000903");
    let (code, b) = notify(
        &s,
        "sp",
        wechat_v3::body("TRANSACTION.SUCCESS", &tx, wechat_v3::API_V3_KEY),
    )
    .await;
    assert_eq!(code, 204, "{b}");
    let refunds = "/api/orders/PSP-A-JSAPI/refunds";
    let (code, v) = s
        .api(
            "POST",
            refunds,
            Some(json!({ "amount": 900, "out_refund_no": "RF-SP-1" })),
        )
        .await;
    assert_eq!((code, str_at(&v, "state")), (201, "accepted"), "{v}");
    let sent = stand_in.lock().bodies("/v3/refund/domestic/refunds");
    assert_eq!(
        sent,
        vec![json!({
            "sub_mchid": SUB_A, "transaction_id": "4200000903", "out_refund_no": "RF-SP-1",
            "notify_url": notify_url,
            "amount": { "refund": 900, "total": 900, "currency": "CNY" }
        })]
    );
    let refund = json!({
        "sp_mchid": SP_MCHID, "sub_mchid": SUB_A, "out_trade_no": "PSP-A-JSAPI",
        "transaction_id": "4200000903", "out_refund_no": "RF-SP-1",
        "refund_id": stand_in.lock().refunds["RF-SP-1"].refund_id.clone(),
        "refund_status": "SUCCESS", "success_time": "2026-01-02T10:00:00+08:00",
        "amount": { "total": 900, "refund": 900, "payer_total": 900, "payer_refund": 900 }
    });
    let body = wechat_v3::refund_body("REFUND.SUCCESS", &refund, wechat_v3::API_V3_KEY);
    for _ in 0..2 {
        let (code, b) = notify(&s, "sp", body.clone()).await;
        assert_eq!(code, 204, "{b}");
    }
    let o = s.order("PSP-A-JSAPI").await;
    assert_eq!((o.status, o.refund_fee), (status::REFUNDED, 900));
    let (_, v) = s.api("GET", refunds, None).await;
    assert_eq!(v["requests"][0]["state"], "settled", "{v}");
    assert_eq!(v["refunds"].as_array().map(Vec::len), Some(1), "{v}");

    // Close B's unpaid order: the partner close naming B.
    let (code, v) = s.api("POST", "/api/orders/PSP-B-JSAPI/close", None).await;
    assert_eq!(
        (code, v["closed_at_provider"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    assert_eq!(
        stand_in.lock().bodies("/close"),
        vec![json!({ "sp_mchid": SP_MCHID, "sub_mchid": SUB_B })]
    );
    assert_eq!(stand_in.lock().bad_requests, Vec::<String>::new());
}
