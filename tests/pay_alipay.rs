//! Placing Alipay payments and starting Alipay refunds end to end: the real server with
//! the real `recharge` handler, a public-key-mode account `a` and a certificate-mode
//! account `c`, each calling its own stand-in of Alipay's gateway
//! (`support/pay_alipay.rs`) that checks every request's RSA2 signature with the app's
//! public key (and, in certificate mode, its SNs) and signs its answers with Alipay's key.
//!
//! - `page`, `wap`, `app` send nothing: the signed URL / order string that comes back is
//!   verified here, independently, with the app's public key, and read for the amount,
//!   `notify_url`, `return_url` and `time_expire`.
//! - `precreate` is called at the gateway; a refusal is a 502 with Alipay's code and
//!   message and the order stored unplaced; an answer with a bad signature is a 502 and
//!   nothing in it is used; the same order number placed again works.
//! - A refund is settled by the verified synchronous answer: status 2, then 3, the
//!   handler's `handle-refunded` once per refund; the same `out_refund_no` again changes
//!   nothing; Alipay's refund notification for the same refund, and a replay of the
//!   stored answer, change nothing either.

use std::collections::BTreeMap;

use paynotify::store::{status, Verdict};
use paynotify_tests::pay_alipay::{self, AlipayStandIn, CertSns};
use paynotify_tests::{alipay, alipay_cert, fake_provider, wechat_v3, Options, TestServer};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};

const PUBLIC_BASE: &str = "https://pay.example.com";
const PAY_EXPIRE_SECS: i64 = 900;
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// One Alipay account of the test server: its name, app id, keys and stand-in.
struct Account {
    name: &'static str,
    app_id: &'static str,
    /// Alipay's key (signs answers and notifications).
    alipay_key: RsaPrivateKey,
    /// The app's public key (verifies what the host signs).
    app_key: RsaPublicKey,
    /// Certificate mode: Alipay's certificate's SN, carried by notifications.
    alipay_cert_sn: Option<String>,
    gateway: AlipayStandIn,
}

struct Rig {
    s: TestServer,
    a: Account,
    c: Account,
    _dir: tempfile::TempDir,
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write key");
    path.display().to_string()
}

/// The server with accounts `a` (public-key mode) and `c` (certificate mode), each with
/// its own stand-in gateway, `public_base_url` set and a 900 s provider lifetime.
async fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("dir");
    let k = wechat_v3::keys();
    let (_, app_a) = fake_provider::host_keys();
    let a = Account {
        name: "a",
        app_id: alipay::APP_ID_A,
        alipay_key: k[2].clone(),
        app_key: app_a.to_public_key(),
        alipay_cert_sn: None,
        gateway: AlipayStandIn::start(pay_alipay::App {
            app_id: alipay::APP_ID_A.into(),
            app_key: app_a.to_public_key(),
            alipay_key: k[2].clone(),
            certs: None,
        })
        .await,
    };
    let ck = alipay_cert::keys();
    let c = Account {
        name: "c",
        app_id: alipay_cert::APP_ID,
        alipay_key: ck[1].clone(),
        app_key: ck[2].to_public_key(),
        alipay_cert_sn: Some(alipay_cert::alipay_cert_sn()),
        gateway: AlipayStandIn::start(pay_alipay::App {
            app_id: alipay_cert::APP_ID.into(),
            app_key: ck[2].to_public_key(),
            alipay_key: ck[1].clone(),
            certs: Some(CertSns {
                app_cert_sn: alipay_cert::app_cert_sn(),
                alipay_root_cert_sn: alipay_cert::root_cert_sn(),
                alipay_cert_sn: alipay_cert::alipay_cert_sn(),
            }),
        })
        .await,
    };
    let d = dir.path();
    let pem = |key: &RsaPrivateKey| key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
    let alipay_pub = write(d, "alipay_pub.pem", &wechat_v3::public_key_pem(&k[2]));
    let app_key_a = write(d, "app_a.pem", &pem(app_a));
    let (app_cert, alipay_cert_pem, root) = alipay_cert::cert_files();
    let config = format!(
        r#"
[[accounts]]
provider = "alipay"
name = "a"
app_id = "{app_id_a}"
alipay_public_key_file = "{alipay_pub}"
app_private_key_file = "{app_key_a}"
api_base = "{base_a}"

[[accounts]]
provider = "alipay"
name = "c"
app_id = "{app_id_c}"
app_cert_file = "{app_cert}"
alipay_cert_file = "{alipay_cert}"
alipay_root_cert_file = "{root}"
app_private_key_file = "{app_key_c}"
api_base = "{base_c}"

[orders]
pay_expire_secs = {PAY_EXPIRE_SECS}
"#,
        app_id_a = alipay::APP_ID_A,
        base_a = a.gateway.base,
        app_id_c = alipay_cert::APP_ID,
        app_cert = write(d, "appCertPublicKey.crt", &app_cert),
        alipay_cert = write(d, "alipayCertPublicKey_RSA2.crt", &alipay_cert_pem),
        root = write(d, "alipayRootCert.crt", &root),
        app_key_c = write(d, "app_c.pem", &pem(&ck[2])),
        base_c = c.gateway.base,
    );
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = config;
    options.server_config = format!("public_base_url = \"{PUBLIC_BASE}\"");
    let s = TestServer::start(options).await;
    Rig { s, a, c, _dir: dir }
}

/// The body of `POST /api/orders` for a recharge of `fen` at `account`, with `pay`.
fn order_body(account: &Account, no: &str, user: &str, fen: i64, pay: Option<Value>) -> Value {
    let mut body = json!({
        "type": "recharge", "total_fee": fen, "user_id": user, "provider": "alipay",
        "account": account.name, "out_trade_no": no,
        "custom": { "recharge_balance": fen }
    });
    if let Some(p) = pay {
        body["pay"] = p;
    }
    body
}

/// The parameters of a URL-encoded form or query.
fn params(form: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect()
}

/// Checks what the host signed for the buyer's client: the app's signature (verified
/// here with the app's public key), the method, the certificate SNs in certificate
/// mode, `notify_url`, and the business content; returns `biz_content`.
fn check_client_params(
    acc: &Account,
    p: &BTreeMap<String, String>,
    method: &str,
    order: &Value,
) -> Value {
    assert!(
        pay_alipay::app_signed(p, &acc.app_key),
        "signed with the app key: {p:?}"
    );
    // Tampering with the amount breaks it: the check above means something.
    let mut tampered = p.clone();
    tampered.insert(
        "biz_content".into(),
        p["biz_content"].replace("\"total_amount\":\"", "\"total_amount\":\"1"),
    );
    assert!(!pay_alipay::app_signed(&tampered, &acc.app_key));
    assert_eq!(p["method"], method);
    assert_eq!(p["app_id"], acc.app_id);
    assert_eq!(p["sign_type"], "RSA2");
    assert_eq!(p["charset"], "utf-8");
    assert_eq!(
        p["notify_url"],
        format!("{PUBLIC_BASE}/notify/alipay/{}", acc.name)
    );
    match &acc.alipay_cert_sn {
        Some(_) => {
            assert_eq!(p["app_cert_sn"], alipay_cert::app_cert_sn());
            assert_eq!(p["alipay_root_cert_sn"], alipay_cert::root_cert_sn());
        }
        None => assert!(!p.contains_key("app_cert_sn")),
    }
    let sent = pay_alipay::china_time_to_unix(&p["timestamp"]).expect("timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((sent - now).abs() < 120, "timestamp {}", p["timestamp"]);
    let biz: Value = serde_json::from_str(&p["biz_content"]).expect("biz_content JSON");
    let fen = order["total_fee"].as_i64().expect("total_fee");
    assert_eq!(biz["out_trade_no"], order["out_trade_no"]);
    assert_eq!(biz["total_amount"], pay_alipay::yuan(fen));
    // The lifetime: created_at + pay_expire_secs, as an absolute China time.
    let created = order["created_at"].as_i64().expect("created_at");
    let expire = (created + PAY_EXPIRE_SECS * 1000).div_euclid(1000);
    assert_eq!(biz["time_expire"], pay_alipay::unix_to_china_time(expire));
    biz
}

/// Pays `no` at the stand-in and notifies the host, as Alipay does after the cashier.
async fn pay_order(s: &TestServer, acc: &Account, no: &str, fen: i64, trade_no: &str) {
    acc.gateway.pay(no, fen, trade_no);
    let mut f = alipay::paid(acc.app_id, no, &pay_alipay::yuan(fen), trade_no);
    f.remove("seller_id");
    if let Some(sn) = &acc.alipay_cert_sn {
        f.insert("alipay_cert_sn".into(), sn.clone());
    }
    let (code, body) = s
        .notify(
            &format!("/notify/alipay/{}", acc.name),
            FORM,
            alipay::body(&f, &acc.alipay_key),
        )
        .await;
    assert_eq!((code, body.as_str()), (200, "success"));
    assert_eq!(s.order(no).await.status, status::PAID);
}

async fn balance(s: &TestServer, user: &str) -> Option<i64> {
    s.document("users", user)
        .await
        .and_then(|d| d["balance"].as_i64())
}

#[tokio::test]
async fn page_wap_and_app_are_signed_for_the_buyer_and_nothing_is_sent() {
    let r = rig().await;
    let s = &r.s;
    for acc in [&r.a, &r.c] {
        let no = format!("PG{}0001", acc.name);
        let pay = json!({
            "method": "page", "description": "会员充值",
            "return_url": "https://shop.example/paid?from=alipay"
        });
        let v = s
            .create_order(order_body(acc, &no, "u1", 1, Some(pay)))
            .await;
        let url = v["payment"]["url"].as_str().expect("url");
        let query = url
            .strip_prefix(&format!("{}/gateway.do?", acc.gateway.base))
            .unwrap_or_else(|| panic!("a gateway URL: {url}"));
        let p = params(query);
        let biz = check_client_params(acc, &p, "alipay.trade.page.pay", &v);
        assert_eq!(biz["total_amount"], "0.01");
        assert_eq!(biz["product_code"], "FAST_INSTANT_TRADE_PAY");
        assert_eq!(biz["subject"], "会员充值");
        assert_eq!(p["return_url"], "https://shop.example/paid?from=alipay");

        let no = format!("WP{}0001", acc.name);
        let pay = json!({"method": "wap", "return_url": "https://shop.example/m"});
        let v = s
            .create_order(order_body(acc, &no, "u1", 12_345, Some(pay)))
            .await;
        let url = v["payment"]["url"].as_str().expect("url");
        let (_, query) = url.split_once('?').expect("query");
        let biz = check_client_params(acc, &params(query), "alipay.trade.wap.pay", &v);
        assert_eq!(biz["total_amount"], "123.45");
        assert_eq!(biz["product_code"], "QUICK_WAP_WAY");
        // The order's type when no description is given.
        assert_eq!(biz["subject"], "recharge");

        let no = format!("AP{}0001", acc.name);
        let v = s
            .create_order(order_body(
                acc,
                &no,
                "u1",
                100,
                Some(json!({"method": "app"})),
            ))
            .await;
        let order_string = v["payment"]["order_string"].as_str().expect("string");
        let p = params(order_string);
        let biz = check_client_params(acc, &p, "alipay.trade.app.pay", &v);
        assert_eq!(biz["total_amount"], "1.00");
        assert_eq!(biz["product_code"], "QUICK_MSECURITY_PAY");
        assert!(!p.contains_key("return_url"));

        // Placed again (`/pay`, as stored): a fresh, valid signature.
        let (code, again) = s.api("POST", &format!("/api/orders/{no}/pay"), None).await;
        assert_eq!(code, 200, "{again}");
        let p = params(again["payment"]["order_string"].as_str().expect("string"));
        check_client_params(acc, &p, "alipay.trade.app.pay", &v);

        // Bad input: 422 naming the field, no order stored.
        for (pay, field) in [
            (json!({"method": "jsapi"}), "pay.method"),
            (
                json!({"method": "page", "return_url": "ftp://shop.example/"}),
                "pay.return_url",
            ),
            (
                json!({"method": "app", "return_url": "https://shop.example/"}),
                "pay.return_url",
            ),
            (json!({"method": "precreate", "openid": "o1"}), "pay.openid"),
            (
                json!({"method": "page", "description": "a&b"}),
                "pay.description",
            ),
        ] {
            let no = format!("BAD{}{}", acc.name, rand::random::<u32>());
            let (code, v) = s
                .api(
                    "POST",
                    "/api/orders",
                    Some(order_body(acc, &no, "u1", 1, Some(pay.clone()))),
                )
                .await;
            assert_eq!(code, 422, "{pay}: {v}");
            let error = v["error"].as_str().unwrap_or_default();
            assert!(error.contains(field), "{pay}: {error}");
            assert!(s.app.store.get_order(&no).await.expect("db").is_none());
        }
        assert_eq!(acc.gateway.request_count(), 0, "nothing sent to Alipay");
    }
}

#[tokio::test]
async fn precreate_refusals_and_forged_answers_leave_the_order_unplaced_then_it_places() {
    let r = rig().await;
    let s = &r.s;
    for acc in [&r.a, &r.c] {
        let g = &acc.gateway;
        let no = format!("QR{}0001", acc.name);
        let body = order_body(acc, &no, "qr", 2_000, Some(json!({"method": "precreate"})));

        g.refuse(
            "alipay.trade.precreate",
            "40004",
            "ACQ.ACCESS_FORBIDDEN",
            "无权限使用接口",
        );
        let (code, v) = s.api("POST", "/api/orders", Some(body.clone())).await;
        assert_eq!(code, 502, "{v}");
        assert_eq!(v["code"], "ACQ.ACCESS_FORBIDDEN");
        assert_eq!(v["message"], "无权限使用接口");
        assert_eq!(v["order"]["out_trade_no"], no.as_str());
        assert_eq!(s.order(&no).await.status, status::UNPAID);
        let placement = s.app.store.payments().placement(&no).await.expect("db");
        let placement = placement.expect("the attempt is recorded");
        assert_eq!(placement.placed_at, None, "not placed");
        assert!(
            placement
                .error
                .as_deref()
                .is_some_and(|e| e.contains("ACQ.ACCESS_FORBIDDEN")),
            "{placement:?}"
        );

        // An answer not signed by Alipay: refused, nothing in it used.
        g.accept("alipay.trade.precreate");
        g.bad_signature(true);
        let (code, v) = s.api("POST", "/api/orders", Some(body.clone())).await;
        assert_eq!(code, 502, "{v}");
        assert!(v.get("payment").is_none(), "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap_or_default()
                .contains("signature"),
            "{v}"
        );
        assert_eq!(s.order(&no).await.status, status::UNPAID);

        // The same order number again: placed.
        g.bad_signature(false);
        let (code, v) = s.api("POST", "/api/orders", Some(body.clone())).await;
        assert_eq!(code, 201, "{v}");
        let placement = s.app.store.payments().placement(&no).await.expect("db");
        let placement = placement.expect("recorded");
        assert!(
            placement.placed_at.is_some() && placement.error.is_none(),
            "{placement:?}"
        );
        let qr = v["payment"]["qr_code"]
            .as_str()
            .expect("qr_code")
            .to_owned();
        assert!(qr.starts_with("https://qr.alipay.com/"), "{qr}");
        assert_eq!(v["payment"]["out_trade_no"], no.as_str());
        let sent = g.received("alipay.trade.precreate");
        assert_eq!(sent.len(), 3);
        let last = sent.last().expect("sent");
        let biz = check_client_params(acc, &last.params, "alipay.trade.precreate", &v);
        assert_eq!(biz["total_amount"], "20.00");
        assert_eq!(biz["subject"], "recharge");

        // Placed again as stored: Alipay answers the same order with the same code.
        let (code, again) = s.api("POST", &format!("/api/orders/{no}/pay"), None).await;
        assert_eq!(code, 200, "{again}");
        assert_eq!(again["payment"]["qr_code"], qr.as_str());

        // Close: an unpaid one at Alipay and here; a paid one is refused (409), unsent.
        let open = format!("QR{}0002", acc.name);
        s.create_order(order_body(
            acc,
            &open,
            "qr",
            10,
            Some(json!({"method": "precreate"})),
        ))
        .await;
        let (code, v) = s
            .api("POST", &format!("/api/orders/{open}/close"), None)
            .await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["closed_at_provider"], true);
        assert_eq!(s.order(&open).await.status, status::CLOSED);
        assert_eq!(g.received("alipay.trade.close").len(), 1);

        pay_order(s, acc, &no, 2_000, &format!("2026{no}")).await;
        let (code, v) = s
            .api("POST", &format!("/api/orders/{no}/close"), None)
            .await;
        assert_eq!(code, 409, "{v}");
        assert_eq!(g.received("alipay.trade.close").len(), 1);
        assert_eq!(s.order(&no).await.status, status::PAID);
        assert!(
            g.lock().bad_requests.is_empty(),
            "{:?}",
            g.lock().bad_requests
        );
    }
}

/// `GET /api/orders/{no}/refunds`.
async fn refund_lists(s: &TestServer, no: &str) -> (Vec<Value>, Vec<Value>) {
    let (code, v) = s
        .api("GET", &format!("/api/orders/{no}/refunds"), None)
        .await;
    assert_eq!(code, 200, "{v}");
    (
        v["refunds"].as_array().cloned().expect("refunds"),
        v["requests"].as_array().cloned().expect("requests"),
    )
}

async fn start_refund(s: &TestServer, no: &str, body: Value) -> (u16, Value) {
    s.api("POST", &format!("/api/orders/{no}/refunds"), Some(body))
        .await
}

/// The whole refund loop on one account's paid order of 100.00.
async fn refunds_settle_once(s: &TestServer, acc: &Account) {
    let g = &acc.gateway;
    let no = format!("RF{}0001", acc.name);
    let user = format!("refund-{}", acc.name);
    let trade_no = format!("2026{no}");
    s.create_order(order_body(acc, &no, &user, 10_000, None))
        .await;
    pay_order(s, acc, &no, 10_000, &trade_no).await;
    assert_eq!(balance(s, &user).await, Some(10_000));
    let sent = || g.received("alipay.trade.refund").len();

    // More than was paid: 422, nothing sent.
    let (code, v) = start_refund(s, &no, json!({"amount": 10_001})).await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(sent(), 0);

    // 30.00: settled by the answer, at once.
    let (code, v) = start_refund(
        s,
        &no,
        json!({"amount": 3_000, "out_refund_no": "R1", "reason": "退货"}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["state"], "settled", "{v}");
    let answer_id = v["notification_id"].as_i64().expect("stored answer");
    let o = s.order(&no).await;
    assert_eq!(
        (o.status, o.refund_fee),
        (status::PARTIALLY_REFUNDED, 3_000)
    );
    assert_eq!(balance(s, &user).await, Some(7_000), "handle-refunded ran");
    let req = g.received("alipay.trade.refund").pop().expect("sent");
    assert!(pay_alipay::app_signed(&req.params, &acc.app_key));
    assert_eq!(req.biz["refund_amount"], "30.00");
    assert_eq!(req.biz["out_request_no"], "R1");
    assert_eq!(req.biz["trade_no"], trade_no.as_str());
    assert_eq!(req.biz["out_trade_no"], no.as_str());
    assert_eq!(req.biz["refund_reason"], "退货");

    // The same refund number again: 200, the same settled request, nothing sent or run.
    let (code, v) = start_refund(s, &no, json!({"amount": 3_000, "out_refund_no": "R1"})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["created"].as_bool()),
        (Some("settled"), Some(false))
    );
    assert_eq!(sent(), 1);
    assert_eq!(balance(s, &user).await, Some(7_000));

    // Refused by Alipay: 502 with its code, the request failed, nothing changed.
    g.refuse(
        "alipay.trade.refund",
        "40004",
        "ACQ.SELLER_BALANCE_NOT_ENOUGH",
        "卖家余额不足",
    );
    let (code, v) = start_refund(s, &no, json!({"amount": 2_000, "out_refund_no": "R2"})).await;
    assert_eq!(code, 502, "{v}");
    assert_eq!(v["code"], "ACQ.SELLER_BALANCE_NOT_ENOUGH");
    assert_eq!(v["message"], "卖家余额不足");
    assert_eq!(s.order(&no).await.refund_fee, 3_000);
    // Service unavailable: the outcome is unknown, the request stays requested.
    g.refuse(
        "alipay.trade.refund",
        "20000",
        "aop.unknow-error",
        "系统繁忙",
    );
    let (code, v) = start_refund(s, &no, json!({"amount": 2_000, "out_refund_no": "R2"})).await;
    assert_eq!(code, 502, "{v}");
    let (_, requests) = refund_lists(s, &no).await;
    let r2 = requests
        .iter()
        .find(|r| r["out_refund_no"] == "R2")
        .expect("R2");
    assert_eq!(r2["state"], "requested", "{r2}");
    g.accept("alipay.trade.refund");
    let (code, v) = start_refund(s, &no, json!({"amount": 2_000, "out_refund_no": "R2"})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "settled", "{v}");
    let o = s.order(&no).await;
    assert_eq!(
        (o.status, o.refund_fee),
        (status::PARTIALLY_REFUNDED, 5_000)
    );
    assert_eq!(balance(s, &user).await, Some(5_000));

    // The rest, answered with a bad signature: Alipay refunded it, but the answer is not
    // believed: nothing changes here and the request stays requested.
    g.bad_signature(true);
    let (code, v) = start_refund(s, &no, json!({"amount": 5_000, "out_refund_no": "R3"})).await;
    assert_eq!(code, 502, "{v}");
    assert_eq!(s.order(&no).await.refund_fee, 5_000);
    assert_eq!(g.refunds(&no).len(), 3, "Alipay did refund it");
    // Asked again: Alipay answers `fund_change` N with the total refunded so far, and
    // the refund settles once, the order now fully refunded.
    g.bad_signature(false);
    let (code, v) = start_refund(s, &no, json!({"amount": 5_000, "out_refund_no": "R3"})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "settled", "{v}");
    let o = s.order(&no).await;
    assert_eq!((o.status, o.refund_fee), (status::REFUNDED, 10_000));
    assert_eq!(balance(s, &user).await, Some(0));
    let made = g.refunds(&no);
    assert_eq!(made.iter().map(|m| m.fen).sum::<i64>(), 10_000);
    assert_eq!(made.last().map(|m| m.asked), Some(2));

    let (refunds, requests) = refund_lists(s, &no).await;
    assert_eq!(refunds.len(), 3, "{refunds:?}");
    let amounts: Vec<i64> = refunds
        .iter()
        .map(|r| r["amount"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(amounts, [3_000, 2_000, 5_000]);
    assert!(
        refunds.iter().all(|r| r["handler_status"] == "succeeded"),
        "{refunds:?}"
    );
    assert_eq!(refunds[2]["original_data"]["fund_change"], "N");
    assert!(
        requests.iter().all(|r| r["state"] == "settled"),
        "{requests:?}"
    );

    // Alipay's refund notification for R1 (when the merchant enabled them): the same
    // refund, a duplicate.
    let mut f = alipay::refunded(
        acc.app_id,
        &no,
        "100.00",
        &trade_no,
        "R1",
        "30.00",
        "TRADE_SUCCESS",
    );
    f.remove("seller_id");
    if let Some(sn) = &acc.alipay_cert_sn {
        f.insert("alipay_cert_sn".into(), sn.clone());
    }
    let (code, body) = s
        .notify(
            &format!("/notify/alipay/{}", acc.name),
            FORM,
            alipay::body(&f, &acc.alipay_key),
        )
        .await;
    assert_eq!((code, body.as_str()), (200, "success"));
    let last = s.notifications().await.pop().expect("stored");
    assert_eq!(last.verdict, Verdict::Duplicate, "{:?}", last.reason);

    // The stored answer that settled R1, replayed: verified again from its bytes, and
    // nothing applies twice.
    let (code, v) = s
        .api(
            "POST",
            &format!("/api/admin/notifications/{answer_id}/replay"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert!(
        matches!(v["verdict"].as_str(), Some("duplicate" | "refunded")),
        "{v}"
    );
    assert!(
        v["verdict"] == "duplicate"
            || v["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("applied by it"),
        "{v}"
    );
    let o = s.order(&no).await;
    assert_eq!((o.status, o.refund_fee), (status::REFUNDED, 10_000));
    assert_eq!(balance(s, &user).await, Some(0));
    assert_eq!(refund_lists(s, &no).await.0.len(), 3);
    assert!(
        g.lock().bad_requests.is_empty(),
        "{:?}",
        g.lock().bad_requests
    );
}

#[tokio::test]
async fn refunds_settle_by_the_verified_answer_exactly_once() {
    let r = rig().await;
    refunds_settle_once(&r.s, &r.a).await;
    refunds_settle_once(&r.s, &r.c).await;
}
