//! The merchant API: auth, validation, and what ops can read.

use paynotify_tests::{wechat_v2, Options, TestServer};
use serde_json::json;

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
