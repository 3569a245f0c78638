//! The merchant API: auth, validation, and what ops can read.

use paynotify_tests::{wechat_v2, Options, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn orders_need_the_bearer_token() {
    let s = TestServer::start(Options::with_plugins(&["recharge"]).with_token()).await;
    let body =
        json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "wechat-v2" });
    let no_token = s
        .http
        .post(s.url("/api/orders"))
        .json(&body)
        .send()
        .await
        .expect("call");
    assert_eq!(no_token.status().as_u16(), 401);
    let wrong = s
        .http
        .post(s.url("/api/orders"))
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .expect("call");
    assert_eq!(wrong.status().as_u16(), 401);
    let order = s.create_order(body).await;
    assert_eq!(order["status"], 0);
    assert_eq!(order["account"], "default");
    assert_eq!(order["custom"], json!({}));
    let no = order["out_trade_no"].as_str().expect("generated number");
    let (st, fetched) = s.api("GET", &format!("/api/orders/{no}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(fetched["out_trade_no"], no);
}

#[tokio::test]
async fn bad_orders_are_refused_with_a_reason() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let cases = [
        (
            json!({ "type": "nope", "total_fee": 1, "user_id": "u", "provider": "wechat-v2" }),
            422,
            "no loaded handler",
        ),
        (
            json!({ "type": "recharge", "total_fee": 0, "user_id": "u", "provider": "wechat-v2" }),
            422,
            "total_fee",
        ),
        (
            json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "paypal" }),
            422,
            "provider",
        ),
        (
            json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "alipay" }),
            422,
            "no account",
        ),
        (
            json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "wechat-v2", "account": "b" }),
            422,
            "no account named",
        ),
        (
            json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "wechat-v2", "custom": [1] }),
            422,
            "custom",
        ),
        (
            json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "wechat-v2", "out_trade_no": "a b" }),
            422,
            "out_trade_no",
        ),
        (
            json!({ "type": "recharge", "total_fee": "1", "user_id": "u", "provider": "wechat-v2" }),
            400,
            "total_fee",
        ),
        (
            json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "wechat-v2", "extra": 1 }),
            400,
            "extra",
        ),
    ];
    for (body, status, needle) in cases {
        let (st, v) = s.api("POST", "/api/orders", Some(body.clone())).await;
        assert_eq!(st, status, "{body}: {v}");
        let msg = v["error"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{body}: `{msg}` lacks `{needle}`");
    }
    let body = json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "wechat-v2", "out_trade_no": "DUP0000001" });
    s.create_order(body.clone()).await;
    let (st, _) = s.api("POST", "/api/orders", Some(body)).await;
    assert_eq!(st, 409);
}

#[tokio::test]
async fn payments_that_cannot_be_placed_are_refused_before_anything_is_stored() {
    // No server.public_base_url, and a CloudPay account (no API from here).
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = format!(
        "[[accounts]]\nprovider = \"cloudpay\"\nname = \"a\"\nsub_mch_id = \"{}\"\nsecret = \"{}\"\n",
        paynotify_tests::cloudpay::SUB_MCH_ID_A,
        paynotify_tests::cloudpay::SECRET_A
    );
    let s = TestServer::start(options).await;
    let order = |no: &str, provider: &str, pay: Value| {
        json!({ "type": "recharge", "total_fee": 100, "user_id": "u", "provider": provider,
                "out_trade_no": no, "pay": pay })
    };
    let cases = [
        (
            order("NOPLACE01", "wechat-v2", json!({ "method": "native" })),
            422,
            "server.public_base_url",
        ),
        (
            order("NOPLACE02", "wechat-v2", json!({ "method": "swipe" })),
            422,
            "pay.method",
        ),
        (
            order("NOPLACE03", "wechat-v2", json!({ "method": "jsapi" })),
            422,
            "pay.openid",
        ),
        (
            order(
                "NOPLACE04",
                "cloudpay",
                json!({ "method": "jsapi", "openid": "o" }),
            ),
            422,
            "CloudPay",
        ),
        (
            order(
                "NOPLACE05",
                "wechat-v2",
                json!({ "method": "native", "amount": 1 }),
            ),
            400,
            "amount",
        ),
        (order("NOPLACE06", "wechat-v2", json!("native")), 400, "pay"),
    ];
    for (body, status, needle) in cases {
        let (st, v) = s.api("POST", "/api/orders", Some(body.clone())).await;
        assert_eq!(st, status, "{body}: {v}");
        let msg = v["error"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{body}: `{msg}` lacks `{needle}`");
        let no = body["out_trade_no"].as_str().unwrap_or("");
        let (st, _) = s.api("GET", &format!("/api/orders/{no}"), None).await;
        assert_eq!(st, 404, "{no} was stored");
    }
    // An existing order placed again needs a `pay`, the first time.
    s.create_order(json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "wechat-v2", "out_trade_no": "NEVERPLACED" })).await;
    let (st, v) = s
        .api("POST", "/api/orders/NEVERPLACED/pay", Some(json!({})))
        .await;
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("never placed"),
        "{v}"
    );
    let (st, _) = s
        .api("POST", "/api/orders/NO-SUCH-ORDER/pay", Some(json!({})))
        .await;
    assert_eq!(st, 404);
    // Refunds: unknown order, unpaid order, bad amounts; nothing recorded.
    let (st, _) = s
        .api(
            "POST",
            "/api/orders/NO-SUCH-ORDER/refunds",
            Some(json!({ "amount": 1 })),
        )
        .await;
    assert_eq!(st, 404);
    for (body, status) in [
        (json!({ "amount": 1 }), 409),
        (json!({ "amount": 0 }), 422),
        (json!({ "amount": 1, "out_refund_no": "has space" }), 422),
        (json!({ "amount": 1, "reason": "x".repeat(81) }), 422),
        (json!({ "amount": "1" }), 400),
    ] {
        let (st, v) = s
            .api(
                "POST",
                "/api/orders/NEVERPLACED/refunds",
                Some(body.clone()),
            )
            .await;
        assert_eq!(st, status, "{body}: {v}");
    }
    let (_, v) = s.api("GET", "/api/orders/NEVERPLACED/refunds", None).await;
    assert_eq!(v, json!({ "refunds": [], "requests": [] }));
}

#[tokio::test]
async fn ops_can_read_notifications_plugins_and_documents_and_replay() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    s.recharge_order("A000000001", "ua", 66).await;
    s.notify_v2(wechat_v2::paid_xml("A000000001", 66, "4200000601"))
        .await;
    let (st, list) = s
        .api("GET", "/api/admin/notifications?verdict=paid", None)
        .await;
    assert_eq!(st, 200);
    let id = list[0]["id"].as_i64().expect("id");
    assert_eq!(list[0]["out_trade_no"], "A000000001");
    let (st, one) = s
        .api("GET", &format!("/api/admin/notifications/{id}"), None)
        .await;
    assert_eq!(st, 200);
    assert!(one["body"].as_str().unwrap_or("").contains("A000000001"));
    // Replaying a processed notification changes nothing; it stays the order's payer.
    let (st, replayed) = s
        .api(
            "POST",
            &format!("/api/admin/notifications/{id}/replay"),
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(replayed["verdict"], "paid");
    assert_eq!(
        s.document("users", "ua").await,
        Some(json!({ "balance": 66 }))
    );
    let (st, doc) = s.api("GET", "/api/admin/collections/users/ua", None).await;
    assert_eq!((st, doc), (200, json!({ "balance": 66 })));
    let (st, plugins) = s.api("GET", "/api/admin/plugins", None).await;
    assert_eq!(st, 200);
    assert_eq!(plugins[0]["type"], "recharge");
    assert_eq!(plugins[0]["loaded"], true);
    assert_eq!(plugins[0]["world_version"], "0.1.0");
    assert_eq!(plugins[0]["sha256"].as_str().map(str::len), Some(64));
    let (st, _) = s
        .api("GET", "/api/admin/notifications?verdict=bogus", None)
        .await;
    assert_eq!(st, 400);
}
