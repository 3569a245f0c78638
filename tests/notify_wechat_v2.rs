//! WeChat Pay v2 end to end: signed notifications against the real server with the real
//! `recharge` handler. Exactly once, and every bad input changes nothing.

use futures::future::join_all;
use paynotify::store::{status, Verdict};
use paynotify_tests::{v2_return_code, wechat_v2, Options, TestServer};

const SUCCESS: &str =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

async fn server() -> TestServer {
    TestServer::start(Options::with_plugins(&["recharge"])).await
}

async fn balance(s: &TestServer, user: &str) -> Option<i64> {
    s.document("users", user)
        .await
        .and_then(|d| d["balance"].as_i64())
}

#[tokio::test]
async fn recharge_is_credited_exactly_once_when_sent_five_times_in_a_row() {
    let s = server().await;
    s.recharge_order("R000000001", "u1", 1500).await;
    let xml = wechat_v2::paid_xml("R000000001", 1500, "4200000001");
    for i in 0..5 {
        let (st, body) = s.notify_v2(xml.clone()).await;
        assert_eq!((st, body.as_str()), (200, SUCCESS), "attempt {i}");
    }
    assert_eq!(balance(&s, "u1").await, Some(1500));
    let order = s.order("R000000001").await;
    assert_eq!(order.status, status::PAID);
    assert_eq!(order.transaction_id.as_deref(), Some("4200000001"));
    assert_eq!(order.handler_status, "succeeded");
    assert_eq!(
        order.handler_result,
        Some(serde_json::json!({ "balance": 1500 }))
    );
    assert_eq!(
        order
            .original_data
            .as_ref()
            .and_then(|d| d["total_fee"].as_str()),
        Some("1500")
    );
    let verdicts: Vec<Verdict> = s.notifications().await.iter().map(|n| n.verdict).collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Paid,
            Verdict::Duplicate,
            Verdict::Duplicate,
            Verdict::Duplicate,
            Verdict::Duplicate
        ]
    );
}

#[tokio::test]
async fn five_duplicates_at_the_same_moment_credit_once() {
    let s = server().await;
    s.recharge_order("R000000002", "u2", 700).await;
    // Each copy gets its own nonce, as WeChat's retries do; all carry the same payment.
    let sends = (0..5).map(|_| s.notify_v2(wechat_v2::paid_xml("R000000002", 700, "4200000002")));
    for (st, body) in join_all(sends).await {
        assert_eq!((st, body.as_str()), (200, SUCCESS));
    }
    assert_eq!(balance(&s, "u2").await, Some(700));
    let n = s.notifications().await;
    assert_eq!(n.iter().filter(|n| n.verdict == Verdict::Paid).count(), 1);
    assert_eq!(
        n.iter().filter(|n| n.verdict == Verdict::Duplicate).count(),
        4
    );
}

#[tokio::test]
async fn two_users_two_orders_each_credited_once() {
    let s = server().await;
    s.recharge_order("R000000003", "u3", 100).await;
    s.recharge_order("R000000004", "u3", 250).await;
    let a = wechat_v2::paid_xml("R000000003", 100, "4200000003");
    let b = wechat_v2::paid_xml("R000000004", 250, "4200000004");
    let sends = [a.clone(), b.clone(), a, b].map(|x| s.notify_v2(x));
    join_all(sends).await;
    assert_eq!(balance(&s, "u3").await, Some(350));
}

/// Every bad notification gets the FAIL answer, changes nothing, and is stored as rejected.
#[tokio::test]
async fn bad_notifications_are_rejected_and_change_nothing() {
    let s = server().await;
    s.recharge_order("R000000010", "u10", 1000).await;

    let mut wrong_appid = wechat_v2::paid("R000000010", 1000, "4200000010");
    wrong_appid.insert("appid".into(), "wx0000000000000000".into());
    let mut tampered = wechat_v2::xml(
        &wechat_v2::paid("R000000010", 1000, "4200000010"),
        wechat_v2::API_KEY,
    );
    tampered = tampered.replace("<total_fee><![CDATA[1000]]>", "<total_fee><![CDATA[1]]>");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong key",
            wechat_v2::xml(
                &wechat_v2::paid("R000000010", 1000, "4200000010"),
                "not-the-merchant-key",
            ),
            "bad signature",
        ),
        ("tampered amount", tampered, "bad signature"),
        (
            "wrong appid",
            wechat_v2::xml(&wrong_appid, wechat_v2::API_KEY),
            "account",
        ),
        (
            "wrong amount",
            wechat_v2::paid_xml("R000000010", 999, "4200000010"),
            "amount mismatch",
        ),
        (
            "unknown order",
            wechat_v2::paid_xml("R999999999", 1000, "4200000011"),
            "unknown order",
        ),
        (
            "malformed XML",
            "<xml><return_code>SUCCESS</return_code".into(),
            "malformed",
        ),
        ("not XML at all", "{\"hello\":1}".into(), "malformed"),
        (
            "no signature",
            {
                let f = wechat_v2::paid("R000000010", 1000, "4200000010");
                let mut x = String::from("<xml>");
                for (k, v) in &f {
                    x.push_str(&format!("<{k}>{v}</{k}>"));
                }
                x + "</xml>"
            },
            "bad signature",
        ),
    ];
    for (name, body, _) in &cases {
        let (st, answer) = s.notify_v2(body.clone()).await;
        assert_eq!(st, 200, "{name}");
        assert_eq!(v2_return_code(&answer), "FAIL", "{name}: {answer}");
    }
    // Oversized: refused with 413 before parsing, still recorded.
    let big = format!("<xml><pad>{}</pad></xml>", "x".repeat(70 * 1024));
    let (st, answer) = s.notify_v2(big).await;
    assert_eq!(st, 413);
    assert_eq!(v2_return_code(&answer), "FAIL");

    let order = s.order("R000000010").await;
    assert_eq!(order.status, status::UNPAID);
    assert_eq!(order.handler_status, "pending");
    assert_eq!(balance(&s, "u10").await, None);

    let stored = s.notifications().await;
    assert_eq!(
        stored.len(),
        cases.len() + 1,
        "every notification is stored"
    );
    for (n, (name, body, reason)) in stored.iter().zip(&cases) {
        assert_eq!(n.verdict, Verdict::Rejected, "{name}");
        let why = n.reason.as_deref().unwrap_or("");
        assert!(
            why.to_lowercase().contains(reason),
            "{name}: reason `{why}` lacks `{reason}`"
        );
        assert_eq!(n.body, body.as_bytes(), "{name}: stored as received");
    }
    let last = stored.last().expect("oversized stored");
    assert_eq!(last.verdict, Verdict::Rejected);
    assert!(last.truncated);
    // Kept up to the size limit, then cut further as a rejection (`[retention]`).
    let kept = paynotify::config::RetentionConfig::default().rejected_body_bytes;
    assert_eq!(last.body.len(), kept.min(64 * 1024));
}

#[tokio::test]
async fn a_verified_non_payment_is_acknowledged_and_changes_nothing() {
    let s = server().await;
    s.recharge_order("R000000020", "u20", 300).await;
    let mut f = wechat_v2::paid("R000000020", 300, "4200000020");
    f.insert("result_code".into(), "FAIL".into());
    f.insert("err_code".into(), "NOTENOUGH".into());
    let (st, body) = s.notify_v2(wechat_v2::xml(&f, wechat_v2::API_KEY)).await;
    assert_eq!((st, body.as_str()), (200, SUCCESS));
    assert_eq!(s.order("R000000020").await.status, status::UNPAID);
    let n = s.notifications().await;
    assert_eq!(n[0].verdict, Verdict::Ignored);
    assert_eq!(n[0].out_trade_no.as_deref(), Some("R000000020"));
}

#[tokio::test]
async fn hmac_sha256_notifications_verify_too() {
    let s = server().await;
    s.recharge_order("R000000030", "u30", 10).await;
    let mut f = wechat_v2::paid("R000000030", 10, "4200000030");
    f.insert("sign_type".into(), "HMAC-SHA256".into());
    let sign = paynotify::providers::wechat_v2::sign(
        &f,
        wechat_v2::API_KEY,
        paynotify::providers::wechat_v2::SignType::HmacSha256,
    );
    let mut xml = String::from("<xml>");
    for (k, v) in &f {
        xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    xml.push_str(&format!("<sign>{sign}</sign></xml>"));
    let (st, body) = s.notify_v2(xml).await;
    assert_eq!((st, body.as_str()), (200, SUCCESS));
    assert_eq!(balance(&s, "u30").await, Some(10));
}
