//! Placing payments and starting refunds with WeChat Pay v2, end to end: the real server
//! calls a stand-in of WeChat's API host over HTTPS (`support/pay_wechat_v2.rs`), which
//! checks every request's signature (MD5 and HMAC-SHA256 with the merchant's API key),
//! fields and amounts, takes refunds over mutual TLS only, and signs its answers.
//!
//! The client parameters the host returns are checked here with this crate's own
//! signers, not the host's; refunds are settled by the refund notification the stand-in
//! makes, exactly once.

use std::collections::BTreeMap;

use paynotify::store::{status, Verdict};
use paynotify_tests::pay_wechat_v2::{
    china_time, hmac_sign, sign_as, signed_xml, untrusted_client_cert, Merchant, PayStandIn, Pki,
};
use paynotify_tests::{v2_return_code, wechat_v2, wechat_v3, Options, TestServer};
use serde_json::{json, Value};

const UNIFIEDORDER: &str = "/pay/unifiedorder";
const REFUND: &str = "/secapi/pay/refund";

/// Signs MD5 (the default sign type).
const MD5: Merchant = Merchant {
    appid: "wx5e1d7a0000000001",
    mch_id: "1900000101",
    api_key: "md5k3y000000000000000000000000a1",
};
/// Pinned to HMAC-SHA256.
const HMAC: Merchant = Merchant {
    appid: "wx5e1d7a0000000002",
    mch_id: "1900000102",
    api_key: "hmack3y00000000000000000000000b2",
};
/// No client certificate configured.
const NOCERT: Merchant = Merchant {
    appid: "wx5e1d7a0000000003",
    mch_id: "1900000103",
    api_key: "n0c3rtk3y0000000000000000000000c",
};
/// A client certificate of a CA WeChat (the stand-in) does not trust.
const WRONGCERT: Merchant = Merchant {
    appid: "wx5e1d7a0000000004",
    mch_id: "1900000104",
    api_key: "wr0ngc3rtk3y00000000000000000000",
};

/// How long the provider keeps an order open (`orders.pay_expire_secs`).
const PAY_EXPIRE_SECS: i64 = 1800;

const PUBLIC_BASE: &str = "https://pay.example.com";

struct Env {
    s: TestServer,
    w: PayStandIn,
    /// The test CA (PEM), which issued the stand-in's server certificate.
    ca_pem: String,
    _keys: tempfile::TempDir,
}

/// The server with the `recharge` handler and four v2 accounts pointing at the stand-in:
/// `md5`, `hmac` (both with client certificates of the test CA), `nocert`, `wrongcert`.
async fn env() -> Env {
    let pki = Pki::new();
    let w = PayStandIn::start(&pki, &[MD5, HMAC, NOCERT, WRONGCERT]).await;
    let keys = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: &str| {
        let path = keys.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let k = wechat_v3::keys();
    let ca = write("wechat_ca.pem", &pki.ca_pem);
    let mut extra = String::new();
    for (name, m, sign_type, cert) in [
        ("md5", MD5, None, Some(pki.client_cert(MD5.mch_id, &k[1]))),
        (
            "hmac",
            HMAC,
            Some("HMAC-SHA256"),
            Some(pki.client_cert(HMAC.mch_id, &k[3])),
        ),
        ("nocert", NOCERT, None, None),
        (
            "wrongcert",
            WRONGCERT,
            None,
            Some(untrusted_client_cert(WRONGCERT.mch_id, &k[1])),
        ),
    ] {
        extra.push_str(&format!(
            "[[accounts]]\nprovider = \"wechat-v2\"\nname = \"{name}\"\nappid = \"{}\"\n\
             mch_id = \"{}\"\napi_key = \"{}\"\napi_base = \"{}\"\napi_ca_cert_file = \"{ca}\"\n",
            m.appid, m.mch_id, m.api_key, w.base
        ));
        if let Some(t) = sign_type {
            extra.push_str(&format!("sign_type = \"{t}\"\n"));
        }
        if let Some(c) = cert {
            let cert = write(&format!("{name}_apiclient_cert.pem"), &c.cert_pem);
            let key = write(&format!("{name}_apiclient_key.pem"), &c.key_pem);
            extra.push_str(&format!(
                "client_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n"
            ));
        }
        extra.push('\n');
    }
    extra.push_str(&format!("[orders]\npay_expire_secs = {PAY_EXPIRE_SECS}\n"));
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = extra;
    options.server_config = format!("public_base_url = \"{PUBLIC_BASE}\"");
    let s = TestServer::start(options).await;
    Env {
        s,
        w,
        ca_pem: pki.ca_pem.clone(),
        _keys: keys,
    }
}

impl Env {
    /// `POST /api/orders` for a recharge of `fen` on `account`, with `pay` when given.
    async fn create(&self, account: &str, no: &str, fen: i64, pay: Option<Value>) -> (u16, Value) {
        let mut body = json!({
            "type": "recharge", "total_fee": fen, "user_id": format!("u-{no}"),
            "provider": "wechat-v2", "account": account, "out_trade_no": no,
            "custom": { "recharge_balance": fen },
        });
        if let Some(p) = pay {
            body["pay"] = p;
        }
        self.s.api("POST", "/api/orders", Some(body)).await
    }

    /// The last verified request to `path` the stand-in received.
    fn last(&self, path: &str) -> BTreeMap<String, String> {
        self.w
            .lock()
            .received_at(path)
            .last()
            .map(|r| r.fields.clone())
            .expect("a request")
    }

    fn count(&self, path: &str) -> usize {
        self.w.lock().received_at(path).len()
    }

    fn no_bad_requests(&self) {
        let bad = self.w.lock().bad_requests.clone();
        assert!(bad.is_empty(), "the stand-in refused requests: {bad:?}");
    }

    fn prepay_id(&self, no: &str) -> String {
        self.w.lock().orders[no].prepay_id.clone()
    }

    /// A placed (native) order of `fen`, paid by notification and at the stand-in.
    async fn paid(
        &self,
        account: &str,
        m: Merchant,
        sign_type: &str,
        no: &str,
        fen: i64,
        tx: &str,
    ) {
        let (code, v) = self
            .create(account, no, fen, Some(json!({ "method": "native" })))
            .await;
        assert_eq!(code, 201, "{v}");
        let mut f = wechat_v2::paid(no, fen, tx);
        f.insert("appid".into(), m.appid.into());
        f.insert("mch_id".into(), m.mch_id.into());
        f.insert("trade_type".into(), "NATIVE".into());
        if sign_type != "MD5" {
            f.insert("sign_type".into(), sign_type.into());
        }
        let (code, body) = self
            .s
            .notify(
                &format!("/notify/wechat-v2/{account}"),
                "text/xml",
                signed_xml(f, sign_type, m.api_key),
            )
            .await;
        assert_eq!((code, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
        assert_eq!(self.s.order(no).await.status, status::PAID);
        self.w.pay(no, tx);
    }

    async fn refund(&self, no: &str, body: Value) -> (u16, Value) {
        self.s
            .api("POST", &format!("/api/orders/{no}/refunds"), Some(body))
            .await
    }

    async fn refunds(&self, no: &str) -> Value {
        let (code, v) = self
            .s
            .api("GET", &format!("/api/orders/{no}/refunds"), None)
            .await;
        assert_eq!(code, 200, "{v}");
        v
    }

    async fn balance(&self, user: &str) -> Option<i64> {
        self.s
            .document("users", user)
            .await
            .and_then(|d| d["balance"].as_i64())
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The JSON object's string fields, as a map (the signed client parameters).
fn strings(v: &Value, keys: &[&str]) -> BTreeMap<String, String> {
    let obj = v.as_object().expect("an object");
    assert_eq!(
        obj.keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        keys.iter().copied().collect(),
        "exactly these parameters: {v}"
    );
    obj.iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_owned()))
        .collect()
}

#[tokio::test]
async fn each_method_is_placed_signed_and_its_client_parameters_verify_independently() {
    let e = env().await;
    for (account, m, sign_type) in [("md5", MD5, "MD5"), ("hmac", HMAC, "HMAC-SHA256")] {
        let notify_url = format!("{PUBLIC_BASE}/notify/wechat-v2/{account}");
        let check_common = |sent: &BTreeMap<String, String>, no: &str, created_at: i64| {
            assert_eq!(sent["appid"], m.appid);
            assert_eq!(sent["mch_id"], m.mch_id);
            assert_eq!(sent["out_trade_no"], no);
            assert_eq!(sent["notify_url"], notify_url);
            assert_eq!(
                sent["time_expire"],
                china_time(created_at + PAY_EXPIRE_SECS * 1000),
                "the order's lifetime from orders.pay_expire_secs, China time"
            );
            assert_eq!(
                sent.get("sign_type").map(String::as_str),
                (sign_type != "MD5").then_some(sign_type),
                "the account's sign type is named unless MD5"
            );
            // The stand-in checked it; checked here again with the other signer pair.
            assert_eq!(sign_as(sign_type, sent, m.api_key), sent["sign"]);
        };

        // JSAPI: paySign over appId, timeStamp, nonceStr, package, signType.
        let no = format!("JS{account}0001");
        let (code, v) = e
            .create(
                account,
                &no,
                1000,
                Some(json!({
                    "method": "jsapi", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
                    "client_ip": "203.0.113.7", "description": "会员充值 10 元"
                })),
            )
            .await;
        assert_eq!(code, 201, "{v}");
        assert_eq!(v["status"], status::UNPAID);
        let sent = e.last(UNIFIEDORDER);
        check_common(&sent, &no, e.s.order(&no).await.created_at);
        assert_eq!(sent["trade_type"], "JSAPI");
        assert_eq!(sent["openid"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
        assert_eq!(sent["total_fee"], "1000");
        assert_eq!(sent["body"], "会员充值 10 元");
        assert_eq!(sent["spbill_create_ip"], "203.0.113.7");
        let p = strings(
            &v["payment"],
            &[
                "appId",
                "timeStamp",
                "nonceStr",
                "package",
                "signType",
                "paySign",
            ],
        );
        assert_eq!(p["appId"], m.appid);
        assert_eq!(p["package"], format!("prepay_id={}", e.prepay_id(&no)));
        assert_eq!(p["signType"], sign_type);
        let ts: i64 = p["timeStamp"].parse().expect("seconds");
        assert!((ts - now_secs()).abs() < 300, "timeStamp {ts}");
        assert!(!p["nonceStr"].is_empty() && p["nonceStr"].len() <= 32);
        let mut signed = p.clone();
        signed.remove("paySign");
        let expected = match sign_type {
            "MD5" => wechat_v2::md5_sign(&signed, m.api_key),
            _ => hmac_sign(&signed, m.api_key),
        };
        assert_eq!(p["paySign"], expected, "paySign, recomputed independently");
        // A forged package would not carry that signature.
        let mut forged = signed.clone();
        forged.insert("package".into(), "prepay_id=wx_other".into());
        assert_ne!(sign_as(sign_type, &forged, m.api_key), p["paySign"]);

        // Placed again (`/pay`, as last placed): the same prepayment, a new signature.
        let (code, again) =
            e.s.api("POST", &format!("/api/orders/{no}/pay"), None)
                .await;
        assert_eq!(code, 200, "{again}");
        assert_eq!(again["payment"]["package"], p["package"].as_str());

        // NATIVE: code_url; no client_ip, so the documented fallback address.
        let no = format!("NA{account}0001");
        let (code, v) = e
            .create(account, &no, 2000, Some(json!({ "method": "NATIVE" })))
            .await;
        assert_eq!(code, 201, "{v}");
        let sent = e.last(UNIFIEDORDER);
        check_common(&sent, &no, e.s.order(&no).await.created_at);
        assert_eq!(sent["trade_type"], "NATIVE");
        assert_eq!(
            sent["body"], "recharge",
            "the order type without a description"
        );
        assert_eq!(sent["spbill_create_ip"], "127.0.0.1");
        assert!(!sent.contains_key("openid"));
        let code_url = v["payment"]["code_url"].as_str().expect("code_url");
        assert!(
            code_url.starts_with("weixin://wxpay/bizpayurl?pr="),
            "{code_url}"
        );
        assert_eq!(v["payment"].as_object().expect("object").len(), 1);

        // MWEB (h5): the buyer's IP, scene_info, and the return page as redirect_url.
        let no = format!("H5{account}0001");
        let (code, v) = e
            .create(
                account,
                &no,
                3000,
                Some(json!({
                    "method": "h5", "client_ip": "198.51.100.20",
                    "return_url": "https://shop.example/paid?o=1"
                })),
            )
            .await;
        assert_eq!(code, 201, "{v}");
        let sent = e.last(UNIFIEDORDER);
        check_common(&sent, &no, e.s.order(&no).await.created_at);
        assert_eq!(sent["trade_type"], "MWEB");
        assert_eq!(sent["spbill_create_ip"], "198.51.100.20");
        let scene: Value = serde_json::from_str(&sent["scene_info"]).expect("scene_info JSON");
        assert_eq!(scene["h5_info"]["type"], "Wap");
        assert_eq!(scene["h5_info"]["wap_url"], "https://shop.example");
        let mweb = v["payment"]["mweb_url"].as_str().expect("mweb_url");
        assert_eq!(
            mweb,
            format!(
                "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={}&package=1037687096\
                 &redirect_url=https%3A%2F%2Fshop.example%2Fpaid%3Fo%3D1",
                e.prepay_id(&no)
            )
        );

        // APP: the PayReq fields and their sign.
        let no = format!("AP{account}0001");
        let (code, v) = e
            .create(account, &no, 4000, Some(json!({ "method": "app" })))
            .await;
        assert_eq!(code, 201, "{v}");
        let sent = e.last(UNIFIEDORDER);
        check_common(&sent, &no, e.s.order(&no).await.created_at);
        assert_eq!(sent["trade_type"], "APP");
        let p = strings(
            &v["payment"],
            &[
                "appid",
                "partnerid",
                "prepayid",
                "package",
                "noncestr",
                "timestamp",
                "sign",
            ],
        );
        assert_eq!(p["appid"], m.appid);
        assert_eq!(p["partnerid"], m.mch_id);
        assert_eq!(p["prepayid"], e.prepay_id(&no));
        assert_eq!(p["package"], "Sign=WXPay");
        let mut signed = p.clone();
        signed.remove("sign");
        assert_eq!(p["sign"], sign_as(sign_type, &signed, m.api_key));
    }
    e.no_bad_requests();
    // The client certificate goes only where WeChat asks for it (refunds).
    assert!(e
        .w
        .lock()
        .received_at(UNIFIEDORDER)
        .iter()
        .all(|r| r.client_cert.is_none()));
}

#[tokio::test]
async fn an_account_without_a_client_certificate_still_places_payments() {
    let e = env().await;
    let (code, v) = e
        .create(
            "nocert",
            "NC0000001",
            500,
            Some(json!({ "method": "native" })),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert!(v["payment"]["code_url"].is_string());
    assert_eq!(
        e.w.lock().received_at(UNIFIEDORDER)[0].client_cert.clone(),
        None
    );
    e.no_bad_requests();
}

#[tokio::test]
async fn bad_pay_input_is_422_naming_the_field_and_nothing_is_sent() {
    let e = env().await;
    let cases = [
        (json!({ "method": "bank" }), "pay.method"),
        (json!({ "method": "Jsapi", "openid": "o" }), "pay.method"),
        (json!({ "method": "jsapi" }), "pay.openid"),
        (json!({ "method": "h5" }), "pay.client_ip"),
        (
            json!({ "method": "MWEB", "client_ip": "not-an-ip" }),
            "pay.client_ip",
        ),
        (
            json!({ "method": "native", "sub_openid": "o" }),
            "pay.sub_openid",
        ),
        (
            json!({ "method": "native", "return_url": "https://x.example/" }),
            "pay.return_url",
        ),
        (
            json!({ "method": "native", "description": "a\u{7}b" }),
            "pay.description",
        ),
    ];
    for (i, (pay, field)) in cases.into_iter().enumerate() {
        let no = format!("BAD00000{i}");
        let (code, v) = e.create("md5", &no, 100, Some(pay.clone())).await;
        assert_eq!(code, 422, "{pay}: {v}");
        let error = v["error"].as_str().expect("error");
        assert!(error.contains(field), "{pay}: {error}");
        let (code, _) = e.s.api("GET", &format!("/api/orders/{no}"), None).await;
        assert_eq!(code, 404, "{pay}: nothing stored");
    }
    // The same through `/pay` on a stored order.
    let (code, v) = e.create("md5", "BADPAY0001", 100, None).await;
    assert_eq!(code, 201, "{v}");
    let (code, v) =
        e.s.api(
            "POST",
            "/api/orders/BADPAY0001/pay",
            Some(json!({ "pay": { "method": "jsapi" } })),
        )
        .await;
    assert_eq!(code, 422, "{v}");
    assert!(
        v["error"].as_str().expect("error").contains("pay.openid"),
        "{v}"
    );
    assert_eq!(e.count(UNIFIEDORDER), 0, "nothing reached WeChat");
    e.no_bad_requests();
}

#[tokio::test]
async fn a_refusal_is_502_with_wechats_code_the_order_stays_unplaced_and_a_retry_places_it() {
    let e = env().await;
    e.w.refuse_next("NOAUTH", "商户无此接口权限");
    let pay = json!({ "method": "jsapi", "openid": "oBuyer" });
    let (code, v) = e.create("hmac", "REFUSE0001", 800, Some(pay.clone())).await;
    assert_eq!(code, 502, "{v}");
    assert_eq!(v["code"], "NOAUTH");
    assert_eq!(v["message"], "商户无此接口权限");
    assert_eq!(v["order"]["out_trade_no"], "REFUSE0001");
    assert_eq!(v["order"]["status"], status::UNPAID);
    assert_eq!(e.s.order("REFUSE0001").await.status, status::UNPAID);

    // The same request again: the stored unpaid order is placed this time.
    let (code, v) = e.create("hmac", "REFUSE0001", 800, Some(pay)).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        v["payment"]["package"],
        format!("prepay_id={}", e.prepay_id("REFUSE0001"))
    );
    assert_eq!(e.count(UNIFIEDORDER), 2);
    e.no_bad_requests();
}

#[tokio::test]
async fn an_answer_with_a_bad_signature_is_502_and_nothing_in_it_is_believed() {
    let e = env().await;
    e.w.bad_signature(true);
    let (code, v) = e
        .create(
            "md5",
            "BADSIG0001",
            600,
            Some(json!({ "method": "native" })),
        )
        .await;
    assert_eq!(code, 502, "{v}");
    assert!(v.get("payment").is_none() && v.get("code").is_none(), "{v}");
    let error = v["error"].as_str().expect("error");
    assert!(error.contains("signature"), "{error}");
    assert_eq!(v["order"]["status"], status::UNPAID);
    // Through `/pay` too; then a good answer places it.
    let (code, v) = e.s.api("POST", "/api/orders/BADSIG0001/pay", None).await;
    assert_eq!(code, 502, "{v}");
    e.w.bad_signature(false);
    let (code, v) = e.s.api("POST", "/api/orders/BADSIG0001/pay", None).await;
    assert_eq!(code, 200, "{v}");
    assert!(v["payment"]["code_url"].is_string(), "{v}");
    e.no_bad_requests();
}

#[tokio::test]
async fn refunds_go_over_mutual_tls_and_settle_once_by_the_refund_notification() {
    let e = env().await;
    for (account, m, sign_type) in [("md5", MD5, "MD5"), ("hmac", HMAC, "HMAC-SHA256")] {
        let no = format!("RF{account}0001");
        let tx = format!("42000{}", m.mch_id);
        let user = format!("u-{no}");
        e.paid(account, m, sign_type, &no, 1000, &tx).await;
        assert_eq!(e.balance(&user).await, Some(1000));

        // More than was paid: refused before anything is sent.
        let (code, v) = e.refund(&no, json!({ "amount": 1001 })).await;
        assert_eq!(code, 422, "{v}");
        assert_eq!(
            e.w.lock().refunds.len(),
            if account == "md5" { 0 } else { 2 }
        );

        let refund_no = format!("R{account}1");
        let body = json!({ "amount": 300, "out_refund_no": refund_no, "reason": "商品破损" });
        let (code, v) = e.refund(&no, body.clone()).await;
        assert_eq!(code, 201, "{v}");
        assert_eq!(v["state"], "accepted");
        assert_eq!(v["out_refund_no"], refund_no.as_str());
        let refund_id =
            e.w.lock()
                .refunds
                .iter()
                .find(|r| r.out_refund_no == refund_no)
                .map(|r| r.refund_id.clone())
                .expect("refunded at the stand-in");
        assert_eq!(v["refund_id"], refund_id.as_str());
        let sent = e.last(REFUND);
        assert_eq!(sent["transaction_id"], tx);
        assert_eq!(sent["out_refund_no"], refund_no);
        assert_eq!(sent["total_fee"], "1000");
        assert_eq!(sent["refund_fee"], "300");
        assert_eq!(sent["refund_desc"], "商品破损");
        assert_eq!(
            sent["notify_url"],
            format!("{PUBLIC_BASE}/notify/wechat-v2/{account}")
        );
        assert_eq!(
            sent.get("sign_type").map(String::as_str),
            (sign_type != "MD5").then_some(sign_type)
        );
        let subject =
            e.w.lock()
                .received_at(REFUND)
                .last()
                .and_then(|r| r.client_cert.clone());
        assert!(
            subject
                .as_deref()
                .is_some_and(|s| s.contains(&format!("CN={}", m.mch_id))),
            "the merchant's client certificate: {subject:?}"
        );
        // Accepted is not refunded: nothing applied yet.
        let o = e.s.order(&no).await;
        assert_eq!((o.status, o.refund_fee), (status::PAID, 0));

        // The same refund number again: the same request, not a second refund.
        let (code, again) = e.refund(&no, body).await;
        assert_eq!(code, 200, "{again}");
        assert_eq!(again["created"], false);
        let at_wechat =
            e.w.lock()
                .refunds
                .iter()
                .filter(|r| r.out_refund_no == refund_no)
                .count();
        assert_eq!(at_wechat, 1);

        let listed = e.refunds(&no).await;
        assert_eq!(listed["refunds"].as_array().map(Vec::len), Some(0));
        assert_eq!(listed["requests"][0]["state"], "accepted");

        // WeChat's refund notification settles it, once.
        let notification = e.w.refund_notification(&refund_no);
        let path = format!("/notify/wechat-v2/{account}");
        let (code, answer) = e.s.notify(&path, "text/xml", notification.clone()).await;
        assert_eq!(
            (code, v2_return_code(&answer)),
            (200, "SUCCESS"),
            "{answer}"
        );
        let o = e.s.order(&no).await;
        assert_eq!((o.status, o.refund_fee), (status::PARTIALLY_REFUNDED, 300));
        assert_eq!(e.balance(&user).await, Some(700));
        let (code, answer) = e.s.notify(&path, "text/xml", notification).await;
        assert_eq!(
            (code, v2_return_code(&answer)),
            (200, "SUCCESS"),
            "{answer}"
        );
        let last = e.s.notifications().await.pop().expect("stored");
        assert_eq!(last.verdict, Verdict::Duplicate);
        let o = e.s.order(&no).await;
        assert_eq!((o.status, o.refund_fee), (status::PARTIALLY_REFUNDED, 300));
        assert_eq!(e.balance(&user).await, Some(700));

        let listed = e.refunds(&no).await;
        assert_eq!(
            listed["refunds"].as_array().map(Vec::len),
            Some(1),
            "{listed}"
        );
        assert_eq!(listed["refunds"][0]["out_refund_no"], refund_no.as_str());
        assert_eq!(listed["requests"][0]["state"], "settled", "{listed}");

        // The rest, with a generated refund number: fully refunded.
        let (code, v) = e.refund(&no, json!({ "amount": 700 })).await;
        assert_eq!(code, 201, "{v}");
        let second = v["out_refund_no"].as_str().expect("generated").to_owned();
        let (code, answer) =
            e.s.notify(&path, "text/xml", e.w.refund_notification(&second))
                .await;
        assert_eq!(
            (code, v2_return_code(&answer)),
            (200, "SUCCESS"),
            "{answer}"
        );
        let o = e.s.order(&no).await;
        assert_eq!((o.status, o.refund_fee), (status::REFUNDED, 1000));
        assert_eq!(e.balance(&user).await, Some(0));
        // Nothing left: refused here, not sent.
        let sent_before = e.count(REFUND);
        let (code, v) = e.refund(&no, json!({ "amount": 1 })).await;
        assert!(code == 409 || code == 422, "{code} {v}");
        assert_eq!(e.count(REFUND), sent_before);
    }
    e.no_bad_requests();
}

#[tokio::test]
async fn a_declined_refund_is_502_with_wechats_code_and_frees_the_amount() {
    let e = env().await;
    e.paid("md5", MD5, "MD5", "RFDECL0001", 500, "4200DECL01")
        .await;
    e.w.refuse_next("NOTENOUGH", "基本账户余额不足");
    let (code, v) = e
        .refund(
            "RFDECL0001",
            json!({ "amount": 500, "out_refund_no": "RD1" }),
        )
        .await;
    assert_eq!(code, 502, "{v}");
    assert_eq!(v["code"], "NOTENOUGH");
    assert_eq!(v["message"], "基本账户余额不足");
    let listed = e.refunds("RFDECL0001").await;
    assert_eq!(listed["requests"][0]["state"], "failed", "{listed}");
    // Nothing moved; the whole amount can be asked for again.
    let (code, v) = e
        .refund(
            "RFDECL0001",
            json!({ "amount": 500, "out_refund_no": "RD2" }),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    e.no_bad_requests();
}

#[tokio::test]
async fn a_system_error_leaves_the_refund_requested_and_its_amount_reserved() {
    let e = env().await;
    e.paid("md5", MD5, "MD5", "RFSYSE0001", 500, "4200SYSE01")
        .await;
    // "System error: call again with the same out_refund_no": the refund may have been
    // taken. A refusal would free the amount for a second refund beside the first.
    e.w.refuse_next("SYSTEMERROR", "系统超时");
    let (code, v) = e
        .refund(
            "RFSYSE0001",
            json!({ "amount": 500, "out_refund_no": "RS1" }),
        )
        .await;
    assert_eq!((code, &v["code"]), (502, &json!("SYSTEMERROR")), "{v}");
    let listed = e.refunds("RFSYSE0001").await;
    assert_eq!(listed["requests"][0]["state"], "requested", "{listed}");
    let (code, v) = e
        .refund(
            "RFSYSE0001",
            json!({ "amount": 500, "out_refund_no": "RS2" }),
        )
        .await;
    assert_eq!(
        code, 422,
        "another number cannot take the reserved amount: {v}"
    );
    let (code, v) = e
        .refund(
            "RFSYSE0001",
            json!({ "amount": 500, "out_refund_no": "RS1" }),
        )
        .await;
    assert_eq!((code, &v["state"]), (200, &json!("accepted")), "{v}");
    e.no_bad_requests();
}

#[tokio::test]
async fn without_a_client_certificate_a_refund_is_refused_before_anything_is_sent() {
    let e = env().await;
    e.paid("nocert", NOCERT, "MD5", "RFNOCERT01", 900, "4200NOCERT")
        .await;
    let (code, v) = e.refund("RFNOCERT01", json!({ "amount": 100 })).await;
    // A configuration gap, found before the refund is even recorded: 422 naming the keys.
    assert_eq!(code, 422, "{v}");
    let error = v["error"].as_str().expect("error");
    assert!(error.contains("client_cert_file"), "{error}");
    assert_eq!(e.count(REFUND), 0);
    assert_eq!(e.w.lock().refunds_without_cert, 0, "not even attempted");
    let listed = e.refunds("RFNOCERT01").await;
    assert_eq!(listed["requests"], json!([]), "nothing recorded: {listed}");
    let o = e.s.order("RFNOCERT01").await;
    assert_eq!((o.status, o.refund_fee), (status::PAID, 0));
    e.no_bad_requests();
}

#[tokio::test]
async fn a_client_certificate_wechat_does_not_trust_fails_the_handshake_and_refunds_nothing() {
    let e = env().await;
    e.paid(
        "wrongcert",
        WRONGCERT,
        "MD5",
        "RFWRONG001",
        900,
        "4200WRONG1",
    )
    .await;
    let (code, v) = e.refund("RFWRONG001", json!({ "amount": 100 })).await;
    assert_eq!(code, 502, "{v}");
    assert!(
        !e.w.lock().handshake_failures.is_empty(),
        "the stand-in refused the certificate at TLS"
    );
    assert_eq!(e.count(REFUND), 0);
    assert!(e.w.lock().refunds.is_empty());
    // No answer: the outcome is unknown to the host, so the request stays requested.
    let listed = e.refunds("RFWRONG001").await;
    assert_eq!(listed["requests"][0]["state"], "requested", "{listed}");
    let o = e.s.order("RFWRONG001").await;
    assert_eq!((o.status, o.refund_fee), (status::PAID, 0));

    // And a refund sent with no certificate at all (not by the host: it never does) is
    // refused by the stand-in, signed or not.
    let mut f = BTreeMap::new();
    for (k, v) in [
        ("appid", MD5.appid),
        ("mch_id", MD5.mch_id),
        ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
        ("transaction_id", "4200WRONG1"),
        ("out_refund_no", "RX1"),
        ("total_fee", "900"),
        ("refund_fee", "100"),
    ] {
        f.insert(k.to_owned(), v.to_owned());
    }
    let ca = reqwest::Certificate::from_pem(e.ca_pem.as_bytes()).expect("ca");
    let plain = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let answer = plain
        .post(format!("{}{REFUND}", e.w.base))
        .body(signed_xml(f, "MD5", MD5.api_key))
        .send()
        .await
        .expect("an answer")
        .text()
        .await
        .expect("text");
    assert_eq!(v2_return_code(&answer), "FAIL", "{answer}");
    assert_eq!(e.w.lock().refunds_without_cert, 1);
    assert!(e.w.lock().refunds.is_empty());
}

#[tokio::test]
async fn close_closes_at_wechat_and_a_paid_order_is_not_closed() {
    let e = env().await;
    let (code, v) = e
        .create(
            "md5",
            "CLOSE00001",
            300,
            Some(json!({ "method": "native" })),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let (code, v) = e.s.api("POST", "/api/orders/CLOSE00001/close", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["closed_at_provider"], true);
    assert!(e.w.lock().orders["CLOSE00001"].closed);
    assert_eq!(e.s.order("CLOSE00001").await.status, status::CLOSED);

    // Paid here: 409, nothing sent.
    e.paid("md5", MD5, "MD5", "CLOSE00002", 300, "4200CLOSE2")
        .await;
    let closes = e.count("/pay/closeorder");
    let (code, v) = e.s.api("POST", "/api/orders/CLOSE00002/close", None).await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(e.count("/pay/closeorder"), closes);

    // Paid at WeChat, not yet here: WeChat refuses to close it, the host finds the payment.
    let (code, v) = e
        .create(
            "hmac",
            "CLOSE00003",
            300,
            Some(json!({ "method": "native" })),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    e.w.pay("CLOSE00003", "4200CLOSE3");
    let (code, v) = e.s.api("POST", "/api/orders/CLOSE00003/close", None).await;
    assert_eq!(code, 409, "{v}");
    let o = e.s.order("CLOSE00003").await;
    assert_eq!(o.status, status::PAID);
    assert_eq!(o.transaction_id.as_deref(), Some("4200CLOSE3"));
    e.no_bad_requests();
}

#[tokio::test]
async fn a_client_key_that_is_not_the_certificates_is_a_config_error_naming_it() {
    let pki = Pki::new();
    let k = wechat_v3::keys();
    let dir = tempfile::tempdir().expect("dir");
    // The certificate is k[1]'s; the key given is k[3].
    let cert = pki.client_cert(MD5.mch_id, &k[1]);
    let other = pki.client_cert(MD5.mch_id, &k[3]);
    std::fs::write(dir.path().join("cert.pem"), &cert.cert_pem).expect("write");
    std::fs::write(dir.path().join("key.pem"), &other.key_pem).expect("write");
    let toml = format!(
        "[[accounts]]\nprovider = \"wechat-v2\"\nname = \"x\"\nappid = \"{}\"\nmch_id = \"{}\"\n\
         api_key = \"{}\"\nclient_cert_file = \"cert.pem\"\nclient_key_file = \"key.pem\"\n",
        MD5.appid, MD5.mch_id, MD5.api_key
    );
    std::fs::write(dir.path().join("paynotify.toml"), toml).expect("write");
    let config =
        paynotify::Config::load(&dir.path().join("paynotify.toml"), Vec::new()).expect("loads");
    let e = paynotify::providers::registry::Registry::from_config(&config.accounts)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("accounts[0]") && e.contains("client_key"), "{e}");
    // With its own key it builds.
    std::fs::write(dir.path().join("key.pem"), &cert.key_pem).expect("write");
    let config =
        paynotify::Config::load(&dir.path().join("paynotify.toml"), Vec::new()).expect("loads");
    assert!(paynotify::providers::registry::Registry::from_config(&config.accounts).is_ok());
}
