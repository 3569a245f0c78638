//! Refund notifications end to end: WeChat Pay v2 (`req_info` AES-256-ECB), v3
//! (`REFUND.*` events) and Alipay (refund fields), made by independent test signers and
//! sent to the real server with the real `recharge` (which handles refunds) and `goods`
//! (which does not) handlers. A refund moves its order to 2 then 3 exactly once, runs the
//! handler in the same transaction, and anything unverified or unappliable changes nothing.

use paynotify::store::{status, Verdict};
use paynotify_tests::process::{all_notifications, connect_store, HostProcess};
use paynotify_tests::{
    alipay, fresh_postgres_url, postgres_only_test_deferred, v2_return_code, wechat_v2, wechat_v3,
    Options, TestServer, TOKEN,
};
use serde_json::{json, Value};

/// A server with `recharge` and `goods`, the default v2 account, a v3 account `a` and an
/// Alipay account `a` (keys written to `keys_dir`).
async fn server(keys_dir: &tempfile::TempDir) -> TestServer {
    let keys = wechat_v3::keys();
    let write = |name: &str, text: String| {
        let path = keys_dir.path().join(name);
        std::fs::write(&path, text).expect("write key");
        path.display().to_string()
    };
    let pub_a = write("wechatpay_pub_a.pem", wechat_v3::public_key_pem(&keys[0]));
    let alipay_a = write("alipay_pub_a.pem", wechat_v3::public_key_pem(&keys[2]));
    let extra = format!(
        r#"
[[accounts]]
provider = "wechat-v3"
name = "a"
appid = "{appid_a}"
mch_id = "{mch_a}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id_a}" = "{pub_a}" }}

[[accounts]]
provider = "alipay"
name = "a"
app_id = "{ali_a}"
alipay_public_key_file = "{alipay_a}"
"#,
        appid_a = wechat_v3::APPID_A,
        mch_a = wechat_v3::MCH_ID_A,
        v3key = wechat_v3::API_V3_KEY,
        pub_id_a = wechat_v3::PUB_KEY_ID_A,
        ali_a = alipay::APP_ID_A,
    );
    let mut options = Options::with_plugins(&["recharge", "goods"]);
    options.extra_config = extra;
    TestServer::start(options).await
}

async fn balance(s: &TestServer, user: &str) -> Option<i64> {
    s.document("users", user)
        .await
        .and_then(|d| d["balance"].as_i64())
}

/// The order's status and refunded total.
async fn refund_state(s: &TestServer, out_trade_no: &str) -> (i32, i64) {
    let o = s.order(out_trade_no).await;
    (o.status, o.refund_fee)
}

/// `GET /api/orders/{no}/refunds`.
async fn refunds(s: &TestServer, out_trade_no: &str) -> Vec<Value> {
    let (code, v) = s
        .api("GET", &format!("/api/orders/{out_trade_no}/refunds"), None)
        .await;
    assert_eq!(code, 200, "{v}");
    v["refunds"].as_array().cloned().expect("refunds array")
}

/// The last stored notification's verdict and reason.
async fn last_verdict(s: &TestServer) -> (Verdict, String) {
    let n = s.notifications().await.pop().expect("a notification");
    (n.verdict, n.reason.unwrap_or_default())
}

/// A v2 recharge order of `fen` for `user`, paid.
async fn paid_v2_recharge(s: &TestServer, no: &str, user: &str, fen: i64, tx: &str) {
    s.recharge_order(no, user, fen).await;
    let (_, body) = s.notify_v2(wechat_v2::paid_xml(no, fen, tx)).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    assert_eq!(s.order(no).await.status, status::PAID);
}

/// A v2 refund notification, encrypted with `key`.
fn v2_refund(no: &str, refund_no: &str, total: i64, refund: i64, tx: &str, key: &str) -> String {
    let info = wechat_v2::refund_info(no, refund_no, total, refund, tx);
    wechat_v2::refund_xml(&wechat_v2::req_info(&info, key))
}

#[tokio::test]
async fn wechat_v2_refunds_move_the_order_to_partly_then_fully_refunded_once() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    paid_v2_recharge(&s, "RV2000001", "u1", 1000, "4200V2001").await;
    assert_eq!(balance(&s, "u1").await, Some(1000));

    let first = v2_refund(
        "RV2000001",
        "RF1",
        1000,
        300,
        "4200V2001",
        wechat_v2::API_KEY,
    );
    let (code, body) = s.notify_v2(first.clone()).await;
    assert_eq!((code, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
    assert_eq!(
        refund_state(&s, "RV2000001").await,
        (status::PARTIALLY_REFUNDED, 300)
    );
    assert_eq!(
        balance(&s, "u1").await,
        Some(700),
        "the handler took 300 back"
    );
    assert_eq!(last_verdict(&s).await.0, Verdict::Refunded);

    // The same refund again, as WeChat retries it: acknowledged, nothing runs again.
    for body in [
        first,
        v2_refund(
            "RV2000001",
            "RF1",
            1000,
            300,
            "4200V2001",
            wechat_v2::API_KEY,
        ),
    ] {
        let (code, answer) = s.notify_v2(body).await;
        assert_eq!(
            (code, v2_return_code(&answer)),
            (200, "SUCCESS"),
            "{answer}"
        );
        assert_eq!(last_verdict(&s).await.0, Verdict::Duplicate);
    }
    assert_eq!(
        refund_state(&s, "RV2000001").await,
        (status::PARTIALLY_REFUNDED, 300)
    );
    assert_eq!(balance(&s, "u1").await, Some(700));

    let rest = v2_refund(
        "RV2000001",
        "RF2",
        1000,
        700,
        "4200V2001",
        wechat_v2::API_KEY,
    );
    let (_, body) = s.notify_v2(rest).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    assert_eq!(
        refund_state(&s, "RV2000001").await,
        (status::REFUNDED, 1000)
    );
    assert_eq!(balance(&s, "u1").await, Some(0));

    let list = refunds(&s, "RV2000001").await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["out_refund_no"], "RF1");
    assert_eq!(list[0]["amount"], 300);
    assert_eq!(list[0]["refunded_total"], 300);
    assert_eq!(list[0]["handler_status"], "succeeded");
    assert_eq!(list[0]["handler_result"]["balance"], 700);
    assert_eq!(list[1]["refunded_total"], 1000);
    assert_eq!(list[1]["original_data"]["refund_status"], "SUCCESS");
    // The order's payment record is untouched by its refunds.
    let order = s.order("RV2000001").await;
    assert_eq!(order.transaction_id.as_deref(), Some("4200V2001"));
    assert_eq!(order.handler_status, "succeeded");

    // A refund past the full amount: acknowledged, recorded for ops, nothing changed.
    let more = v2_refund("RV2000001", "RF3", 1000, 1, "4200V2001", wechat_v2::API_KEY);
    let (_, body) = s.notify_v2(more).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    let (verdict, reason) = last_verdict(&s).await;
    assert_eq!(verdict, Verdict::RefundUnapplied);
    assert!(reason.contains("more than the 0 fen"), "{reason}");
    assert_eq!(
        refund_state(&s, "RV2000001").await,
        (status::REFUNDED, 1000)
    );
    assert_eq!(balance(&s, "u1").await, Some(0));
}

#[tokio::test]
async fn wechat_v2_refunds_that_do_not_decrypt_with_our_key_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    paid_v2_recharge(&s, "RV2000002", "u2", 500, "4200V2002").await;

    let info = wechat_v2::refund_info("RV2000002", "RF1", 500, 500, "4200V2002");
    let good = wechat_v2::req_info(&info, wechat_v2::API_KEY);
    // Another block of ciphertext in the middle: still base64, still whole blocks.
    let mut spliced = base64_decode(&good);
    spliced[16..32].copy_from_slice(&[0x5a; 16]);
    let cases = [
        (
            "another merchant's key",
            wechat_v2::req_info(&info, "an0therk3y000000000000000000000"),
        ),
        ("tampered ciphertext", base64_encode(&spliced)),
        ("cut short", good[..good.len() - 24].to_owned()),
        ("not base64", "@@not base64@@".to_owned()),
        ("empty", String::new()),
    ];
    for (name, req_info) in &cases {
        let (code, body) = s.notify_v2(wechat_v2::refund_xml(req_info)).await;
        assert_eq!(
            (code, v2_return_code(&body)),
            (200, "FAIL"),
            "{name}: {body}"
        );
        let (verdict, reason) = last_verdict(&s).await;
        assert_eq!(verdict, Verdict::Rejected, "{name}: {reason}");
    }
    // A good req_info in an envelope naming another merchant.
    let forged = wechat_v2::refund_xml(&good).replace(wechat_v2::MCH_ID, "19999999");
    let (_, body) = s.notify_v2(forged).await;
    assert_eq!(v2_return_code(&body), "FAIL", "{body}");
    assert_eq!(last_verdict(&s).await.0, Verdict::Rejected);

    assert_eq!(refund_state(&s, "RV2000002").await, (status::PAID, 0));
    assert_eq!(balance(&s, "u2").await, Some(500));
    assert!(refunds(&s, "RV2000002").await.is_empty());

    // The genuine one still applies afterwards.
    let (_, body) = s.notify_v2(wechat_v2::refund_xml(&good)).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    assert_eq!(refund_state(&s, "RV2000002").await, (status::REFUNDED, 500));
}

#[tokio::test]
async fn verified_refunds_that_cannot_apply_are_recorded_for_ops_and_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    paid_v2_recharge(&s, "RV2000003", "u3", 800, "4200V2003").await;

    let key = wechat_v2::API_KEY;
    let cases = [
        (
            "over-refund",
            v2_refund("RV2000003", "RF1", 800, 801, "4200V2003", key),
            "more than the 800 fen",
        ),
        (
            "total mismatch",
            v2_refund("RV2000003", "RF1", 900, 100, "4200V2003", key),
            "total mismatch",
        ),
        (
            "another payment",
            v2_refund("RV2000003", "RF1", 800, 100, "4200OTHER", key),
            "paid by transaction 4200V2003",
        ),
    ];
    for (name, body, why) in cases {
        let (code, answer) = s.notify_v2(body).await;
        assert_eq!(
            (code, v2_return_code(&answer)),
            (200, "SUCCESS"),
            "{name}: {answer}"
        );
        let (verdict, reason) = last_verdict(&s).await;
        assert_eq!(verdict, Verdict::RefundUnapplied, "{name}: {reason}");
        assert!(reason.contains(why), "{name}: `{reason}` lacks `{why}`");
    }
    // Not silent: listed for ops, counted, and on the console's attention page.
    let (code, v) = s
        .api(
            "GET",
            "/api/admin/notifications?verdict=refund_unapplied",
            None,
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(3), "{v}");
    let metrics = s.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "paynotify_refunds_unapplied_total{provider=\"wechat-v2\"} 3"),
        "{metrics}"
    );

    let attention = console_page(&s, "/console/attention").await;
    assert!(
        attention.contains("Refunds that cannot apply (3)"),
        "{attention}"
    );
    for n in s.notifications().await {
        if n.verdict == Verdict::RefundUnapplied {
            let row = format!("data-notification=\"{}\"", n.id);
            assert!(attention.contains(&row), "{} not listed: {attention}", n.id);
        }
    }

    // A refund that did not go through (REFUNDCLOSE) is acknowledged and ignored.
    let mut info = wechat_v2::refund_info("RV2000003", "RF9", 800, 100, "4200V2003");
    info.insert("refund_status".into(), "REFUNDCLOSE".into());
    let (_, answer) = s
        .notify_v2(wechat_v2::refund_xml(&wechat_v2::req_info(&info, key)))
        .await;
    assert_eq!(v2_return_code(&answer), "SUCCESS", "{answer}");
    assert_eq!(last_verdict(&s).await.0, Verdict::Ignored);

    assert_eq!(refund_state(&s, "RV2000003").await, (status::PAID, 0));
    assert_eq!(balance(&s, "u3").await, Some(800));
    assert!(refunds(&s, "RV2000003").await.is_empty());
}

/// Two host processes with `recharge` on the PostgreSQL database `url`.
async fn two_recharge_hosts(dir: &tempfile::TempDir, url: &str) -> (HostProcess, HostProcess) {
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("dir a");
    std::fs::create_dir_all(&db).expect("dir b");
    let plugins = [("recharge", "recharge", None)];
    tokio::join!(
        HostProcess::start("host a", &da, url, &plugins, ""),
        HostProcess::start("host b", &db, url, &plugins, ""),
    )
}

/// A console page of `s`, signed in with the API token.
async fn console_page(s: &TestServer, path: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signed_in = http
        .post(s.url("/console/login"))
        .header("origin", format!("http://{}", s.addr))
        .form(&[("token", TOKEN), ("next", path)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed_in.status().as_u16(), 303, "sign-in redirects");
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("the console cookie")
        .to_owned();
    let page = http
        .get(s.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 200, "{path}");
    page.text().await.expect("page text")
}

/// The provider, out of order: a refund delivered before its payment (unknown order,
/// then unpaid order) must not be acknowledged and lost — the payment that follows
/// would credit the buyer whose money already went back. It gets the failure answer
/// (the provider retries) and is applied, handler included, the moment the payment
/// commits, whatever the provider does next.
#[tokio::test]
async fn a_refund_before_its_payment_is_refused_then_applied_when_the_payment_commits() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let key = wechat_v2::API_KEY;

    // Before the order exists.
    let early_unknown = v2_refund("RV2000004", "RF1", 800, 100, "4200V2004", key);
    let (code, answer) = s.notify_v2(early_unknown).await;
    assert_eq!((code, v2_return_code(&answer)), (200, "FAIL"), "{answer}");
    let (verdict, reason) = last_verdict(&s).await;
    assert_eq!(verdict, Verdict::RefundPending, "{reason}");
    assert!(reason.contains("unknown order"), "{reason}");

    // The order exists but is unpaid: a second refund of it.
    s.recharge_order("RV2000004", "u4", 800).await;
    let early_unpaid = v2_refund("RV2000004", "RF2", 800, 200, "4200V2004", key);
    let (code, answer) = s.notify_v2(early_unpaid.clone()).await;
    assert_eq!((code, v2_return_code(&answer)), (200, "FAIL"), "{answer}");
    let (verdict, reason) = last_verdict(&s).await;
    assert_eq!(verdict, Verdict::RefundPending, "{reason}");
    assert!(reason.contains("unpaid"), "{reason}");
    assert_eq!(refund_state(&s, "RV2000004").await, (status::UNPAID, 0));
    assert_eq!(balance(&s, "u4").await, None);
    let (code, v) = s
        .api(
            "GET",
            "/api/admin/notifications?verdict=refund_pending",
            None,
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");

    // The payment arrives: it credits, and both refunds apply at once through the refund
    // path (recharge's handle-refunded takes the refunded fen back off the balance).
    let (_, body) = s
        .notify_v2(wechat_v2::paid_xml("RV2000004", 800, "4200V2004"))
        .await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    assert_eq!(
        refund_state(&s, "RV2000004").await,
        (status::PARTIALLY_REFUNDED, 300)
    );
    assert_eq!(balance(&s, "u4").await, Some(500));
    assert_eq!(refunds(&s, "RV2000004").await.len(), 2);
    let (code, v) = s
        .api(
            "GET",
            "/api/admin/notifications?verdict=refund_pending",
            None,
        )
        .await;
    assert_eq!((code, v.as_array().map(Vec::len)), (200, Some(0)), "{v}");

    // The provider's retry of a refund it was told to retry: a duplicate, acknowledged.
    let (_, answer) = s.notify_v2(early_unpaid).await;
    assert_eq!(v2_return_code(&answer), "SUCCESS", "{answer}");
    assert_eq!(last_verdict(&s).await.0, Verdict::Duplicate);
    assert_eq!(
        refund_state(&s, "RV2000004").await,
        (status::PARTIALLY_REFUNDED, 300)
    );
    assert_eq!(balance(&s, "u4").await, Some(500));
}

#[tokio::test]
async fn concurrent_copies_of_one_refund_apply_it_once() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    paid_v2_recharge(&s, "RV2000005", "u5", 1000, "4200V2005").await;
    let bodies: Vec<String> = (0..8)
        .map(|_| {
            v2_refund(
                "RV2000005",
                "RF1",
                1000,
                400,
                "4200V2005",
                wechat_v2::API_KEY,
            )
        })
        .collect();
    let answers = futures::future::join_all(bodies.into_iter().map(|b| s.notify_v2(b))).await;
    for (code, body) in &answers {
        assert_eq!((*code, v2_return_code(body)), (200, "SUCCESS"), "{body}");
    }
    let verdicts: Vec<Verdict> = s
        .notifications()
        .await
        .into_iter()
        .skip(1) // the payment
        .map(|n| n.verdict)
        .collect();
    assert_eq!(verdicts.len(), 8);
    assert_eq!(
        verdicts.iter().filter(|v| **v == Verdict::Refunded).count(),
        1,
        "{verdicts:?}"
    );
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| **v == Verdict::Duplicate)
            .count(),
        7,
        "{verdicts:?}"
    );
    assert_eq!(
        refund_state(&s, "RV2000005").await,
        (status::PARTIALLY_REFUNDED, 400)
    );
    assert_eq!(balance(&s, "u5").await, Some(600));
    assert_eq!(refunds(&s, "RV2000005").await.len(), 1);
}

#[tokio::test]
async fn a_handler_without_handle_refunded_loads_and_its_orders_still_refund() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let (code, plugins) = s.api("GET", "/api/admin/plugins", None).await;
    assert_eq!(code, 200);
    let handles = |t: &str| {
        plugins
            .as_array()
            .and_then(|a| a.iter().find(|p| p["type"] == t))
            .map(|p| (p["loaded"].clone(), p["handles_refunds"].clone()))
    };
    assert_eq!(handles("goods"), Some((json!(true), json!(false))));
    assert_eq!(handles("recharge"), Some((json!(true), json!(true))));

    s.create_order(json!({
        "type": "goods", "total_fee": 9900, "user_id": "u6", "provider": "wechat-v2",
        "out_trade_no": "RG0000001", "custom": { "goods_id": "sku-9", "quantity": 2 }
    }))
    .await;
    let (_, body) = s
        .notify_v2(wechat_v2::paid_xml("RG0000001", 9900, "4200G001"))
        .await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    let stock = s.document("goods", "sku-9").await;
    assert_eq!(stock.as_ref().map(|d| d["stock"].clone()), Some(json!(-2)));

    let refund = v2_refund(
        "RG0000001",
        "RFG1",
        9900,
        9900,
        "4200G001",
        wechat_v2::API_KEY,
    );
    let (_, body) = s.notify_v2(refund).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    assert_eq!(
        refund_state(&s, "RG0000001").await,
        (status::REFUNDED, 9900)
    );
    assert_eq!(s.document("goods", "sku-9").await, stock, "no handler ran");
    let list = refunds(&s, "RG0000001").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["handler_status"], "no refund handler");
    assert_eq!(last_verdict(&s).await.0, Verdict::Refunded);
}

#[tokio::test]
async fn a_failing_refund_handler_rolls_the_refund_back_and_the_provider_retries() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    paid_v2_recharge(&s, "RV2000007", "u7", 1000, "4200V2007").await;
    // The user document no longer holds a number: `inc` fails, the handler errors.
    set_document(&s, "users", "u7", r#"{"balance":"frozen"}"#).await;

    let refund = v2_refund(
        "RV2000007",
        "RF1",
        1000,
        250,
        "4200V2007",
        wechat_v2::API_KEY,
    );
    let (code, body) = s.notify_v2(refund.clone()).await;
    assert_eq!((code, v2_return_code(&body)), (200, "FAIL"), "{body}");
    let (verdict, reason) = last_verdict(&s).await;
    assert_eq!(verdict, Verdict::Failed);
    assert!(reason.contains("handler error"), "{reason}");
    assert_eq!(refund_state(&s, "RV2000007").await, (status::PAID, 0));
    assert!(refunds(&s, "RV2000007").await.is_empty());
    assert_eq!(
        s.document("users", "u7").await,
        Some(json!({ "balance": "frozen" }))
    );

    // Fixed; the provider's retry completes it, once.
    set_document(&s, "users", "u7", r#"{"balance":1000}"#).await;
    let (_, body) = s.notify_v2(refund).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    assert_eq!(
        refund_state(&s, "RV2000007").await,
        (status::PARTIALLY_REFUNDED, 250)
    );
    assert_eq!(balance(&s, "u7").await, Some(750));
}

#[tokio::test]
async fn wechat_v3_refund_events() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let key = &wechat_v3::keys()[0];
    let send = |body: String| {
        let h = wechat_v3::headers(key, wechat_v3::PUB_KEY_ID_A, wechat_v3::now(), &body);
        let s = &s;
        async move {
            s.notify_with_headers("/notify/wechat-v3", "application/json", &h, body)
                .await
        }
    };
    s.create_order(json!({
        "type": "recharge", "total_fee": 1500, "user_id": "v3u", "provider": "wechat-v3",
        "account": "a", "out_trade_no": "RV3000001", "custom": { "recharge_balance": 1500 }
    }))
    .await;
    let tx = wechat_v3::transaction(
        wechat_v3::APPID_A,
        wechat_v3::MCH_ID_A,
        "RV3000001",
        1500,
        "4200V3001",
        "SUCCESS",
    );
    let paid = wechat_v3::body("TRANSACTION.SUCCESS", &tx, wechat_v3::API_V3_KEY);
    assert_eq!(send(paid).await.0, 204);
    assert_eq!(balance(&s, "v3u").await, Some(1500));

    let refund = |no: &str, amount: i64, state: &str| {
        wechat_v3::refund(
            wechat_v3::MCH_ID_A,
            "RV3000001",
            no,
            1500,
            amount,
            "4200V3001",
            state,
        )
    };
    let first = wechat_v3::refund_body(
        "REFUND.SUCCESS",
        &refund("RF1", 500, "SUCCESS"),
        wechat_v3::API_V3_KEY,
    );
    assert_eq!(send(first.clone()).await, (204, String::new()));
    assert_eq!(
        refund_state(&s, "RV3000001").await,
        (status::PARTIALLY_REFUNDED, 500)
    );
    assert_eq!(balance(&s, "v3u").await, Some(1000));

    // Abnormal and closed refunds are recorded and change nothing.
    for (event, state) in [("REFUND.ABNORMAL", "ABNORMAL"), ("REFUND.CLOSED", "CLOSED")] {
        let body =
            wechat_v3::refund_body(event, &refund("RF2", 1000, state), wechat_v3::API_V3_KEY);
        assert_eq!(send(body).await.0, 204, "{event}");
        assert_eq!(last_verdict(&s).await.0, Verdict::Ignored, "{event}");
    }
    // A duplicate, re-signed as WeChat retries: nothing again.
    assert_eq!(send(first).await.0, 204);
    assert_eq!(last_verdict(&s).await.0, Verdict::Duplicate);
    // Signed by a stranger, or encrypted with another key: 400, nothing changed.
    let body = wechat_v3::refund_body(
        "REFUND.SUCCESS",
        &refund("RF2", 1000, "SUCCESS"),
        wechat_v3::API_V3_KEY,
    );
    let h = wechat_v3::headers(
        &wechat_v3::keys()[3],
        wechat_v3::PUB_KEY_ID_A,
        wechat_v3::now(),
        &body,
    );
    let (code, answer) = s
        .notify_with_headers("/notify/wechat-v3", "application/json", &h, body.clone())
        .await;
    assert_eq!(code, 400, "{answer}");
    let wrong = wechat_v3::refund_body(
        "REFUND.SUCCESS",
        &refund("RF2", 1000, "SUCCESS"),
        "0123456789abcdef0123456789abcdef",
    );
    assert_eq!(send(wrong).await.0, 400);
    assert_eq!(
        refund_state(&s, "RV3000001").await,
        (status::PARTIALLY_REFUNDED, 500)
    );

    assert_eq!(send(body).await.0, 204);
    assert_eq!(
        refund_state(&s, "RV3000001").await,
        (status::REFUNDED, 1500)
    );
    assert_eq!(balance(&s, "v3u").await, Some(0));
    assert_eq!(refunds(&s, "RV3000001").await.len(), 2);
}

#[tokio::test]
async fn alipay_refunds_state_the_total_refunded_so_far() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let key = &wechat_v3::keys()[2];
    let send = |fields: std::collections::BTreeMap<String, String>, k: &rsa::RsaPrivateKey| {
        let body = alipay::body(&fields, k);
        let s = &s;
        async move {
            s.notify("/notify/alipay", "application/x-www-form-urlencoded", body)
                .await
        }
    };
    s.create_order(json!({
        "type": "recharge", "total_fee": 10000, "user_id": "ali", "provider": "alipay",
        "account": "a", "out_trade_no": "RA0000001", "custom": { "recharge_balance": 10000 }
    }))
    .await;
    let paid = alipay::paid(alipay::APP_ID_A, "RA0000001", "100.00", "2026AL001");
    assert_eq!(send(paid, key).await, (200, "success".into()));
    assert_eq!(balance(&s, "ali").await, Some(10000));

    let refund = |no: &str, total: &str, state: &str| {
        alipay::refunded(
            alipay::APP_ID_A,
            "RA0000001",
            "100.00",
            "2026AL001",
            no,
            total,
            state,
        )
    };
    assert_eq!(
        send(refund("RF1", "30.00", "TRADE_SUCCESS"), key).await,
        (200, "success".into())
    );
    assert_eq!(
        refund_state(&s, "RA0000001").await,
        (status::PARTIALLY_REFUNDED, 3000)
    );
    assert_eq!(balance(&s, "ali").await, Some(7000));

    // Signed with another key: `failure`, nothing changed.
    let forged = refund("RF2", "100.00", "TRADE_CLOSED");
    assert_eq!(
        send(forged.clone(), &wechat_v3::keys()[3]).await,
        (200, "failure".into())
    );
    assert_eq!(last_verdict(&s).await.0, Verdict::Rejected);
    assert_eq!(
        refund_state(&s, "RA0000001").await,
        (status::PARTIALLY_REFUNDED, 3000)
    );

    // The full refund: 100.00 in total, so this one is 70.00.
    assert_eq!(send(forged, key).await, (200, "success".into()));
    assert_eq!(
        refund_state(&s, "RA0000001").await,
        (status::REFUNDED, 10000)
    );
    assert_eq!(balance(&s, "ali").await, Some(0));
    let list = refunds(&s, "RA0000001").await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["out_refund_no"], "RF2");
    assert_eq!(list[1]["amount"], 7000);

    // The first refund's notification again (Alipay retries): nothing again.
    assert_eq!(
        send(refund("RF1", "30.00", "TRADE_SUCCESS"), key).await,
        (200, "success".into())
    );
    assert_eq!(last_verdict(&s).await.0, Verdict::Duplicate);
    assert_eq!(balance(&s, "ali").await, Some(0));
}

/// Two `paynotify serve` processes on one PostgreSQL schema, copies of two refunds of
/// one order sent to both at once: each refund applies once, the credit is taken back
/// exactly once. (PostgreSQL only: it runs in the PostgreSQL pass.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_refunds_sent_to_two_processes_at_once_apply_once() {
    if postgres_only_test_deferred("refunds across processes") {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let url = fresh_postgres_url();
    let (a, b) = two_recharge_hosts(&dir, &url).await;
    a.create_order(json!({
        "type": "recharge", "total_fee": 1000, "user_id": "mpu", "provider": "wechat-v2",
        "out_trade_no": "RMP00001", "custom": { "recharge_balance": 1000 }
    }))
    .await;
    let paid = wechat_v2::paid_xml("RMP00001", 1000, "4200MP001");
    let (_, body) = a
        .try_notify("/notify/wechat-v2", "text/xml", &[], paid)
        .await
        .expect("answer");
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");

    const COPIES: usize = 6;
    let sends = (0..2 * COPIES).map(|c| {
        let host = if c % 2 == 0 { &a } else { &b };
        let (no, fee) = if c < COPIES {
            ("RF1", 300)
        } else {
            ("RF2", 700)
        };
        let xml = v2_refund("RMP00001", no, 1000, fee, "4200MP001", wechat_v2::API_KEY);
        async move {
            host.try_notify("/notify/wechat-v2", "text/xml", &[], xml)
                .await
        }
    });
    for (n, answer) in futures::future::join_all(sends)
        .await
        .into_iter()
        .enumerate()
    {
        let (code, body) = answer.unwrap_or_else(|e| panic!("copy {n}: no answer: {e}"));
        assert_eq!(
            (code, v2_return_code(&body)),
            (200, "SUCCESS"),
            "copy {n}: {body}"
        );
    }

    let store = connect_store(&url).await;
    let order = store
        .get_order("RMP00001")
        .await
        .expect("db")
        .expect("order");
    assert_eq!((order.status, order.refund_fee), (status::REFUNDED, 1000));
    let applied = store.list_refunds("RMP00001").await.expect("db");
    assert_eq!(applied.len(), 2, "{applied:?}");
    let verdicts: Vec<Verdict> = all_notifications(store.as_ref())
        .await
        .into_iter()
        .map(|n| n.verdict)
        .collect();
    let count = |v: Verdict| verdicts.iter().filter(|x| **x == v).count();
    assert_eq!(count(Verdict::Refunded), 2, "{verdicts:?}");
    assert_eq!(count(Verdict::Duplicate), 2 * COPIES - 2, "{verdicts:?}");
    let user = store.get_document("users", "mpu").await.expect("db");
    let user: Value = serde_json::from_str(&user.expect("user document")).expect("json");
    assert_eq!(user["balance"], 0, "the credit is taken back exactly once");
}

/// Writes a handler document directly (what an operator or another system could do).
async fn set_document(s: &TestServer, collection: &str, id: &str, data: &str) {
    let mut tx = s.app.store.begin().await.expect("begin");
    tx.doc_put(collection, id, data).await.expect("put");
    tx.commit().await.expect("commit");
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A refund that overtook its payment on one host is applied by the other host that
/// commits the payment, and copies of the payment racing on both hosts apply it once.
#[tokio::test]
async fn a_refund_stored_on_one_host_is_applied_by_the_payment_on_another() {
    if postgres_only_test_deferred("early refunds across processes") {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let url = fresh_postgres_url();
    let (a, b) = two_recharge_hosts(&dir, &url).await;
    a.create_order(json!({
        "type": "recharge", "total_fee": 1000, "user_id": "early", "provider": "wechat-v2",
        "out_trade_no": "RMP00002", "custom": { "recharge_balance": 1000 }
    }))
    .await;
    let refund = v2_refund(
        "RMP00002",
        "RF1",
        1000,
        400,
        "4200MP002",
        wechat_v2::API_KEY,
    );
    let (_, body) = a
        .try_notify("/notify/wechat-v2", "text/xml", &[], refund)
        .await
        .expect("answer");
    assert_eq!(v2_return_code(&body), "FAIL", "told to retry: {body}");

    let paid = wechat_v2::paid_xml("RMP00002", 1000, "4200MP002");
    let sends = (0..6).map(|c| {
        let host = if c % 2 == 0 { &b } else { &a };
        let xml = paid.clone();
        async move {
            host.try_notify("/notify/wechat-v2", "text/xml", &[], xml)
                .await
        }
    });
    for answer in futures::future::join_all(sends).await {
        let (_, body) = answer.expect("answer");
        assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    }
    let store = connect_store(&url).await;
    let order = store
        .get_order("RMP00002")
        .await
        .expect("db")
        .expect("order");
    assert_eq!(
        (order.status, order.refund_fee),
        (status::PARTIALLY_REFUNDED, 400)
    );
    assert_eq!(store.list_refunds("RMP00002").await.expect("db").len(), 1);
    let user = store.get_document("users", "early").await.expect("db");
    let user: Value = serde_json::from_str(&user.expect("user document")).expect("json");
    assert_eq!(
        user["balance"], 600,
        "credited once, the refund taken back once"
    );
}
