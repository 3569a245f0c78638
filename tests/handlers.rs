//! Handlers end to end: the examples do their business, failing or misbehaving ones roll
//! the whole payment back, and a handler only reaches what its manifest grants.

use paynotify::store::{status, Verdict};
use paynotify_tests::{install_plugin, v2_return_code, wait_until, wechat_v2, Options, TestServer};
use serde_json::json;

const SUCCESS: &str =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// A failing handler leaves the order unpaid with none of its writes; once a working
/// handler is in place the provider's retry completes the payment exactly once.
#[tokio::test]
async fn failing_handler_rolls_back_then_a_fixed_plugin_completes_the_retry() {
    for bad in ["fail-always", "trap"] {
        let s =
            TestServer::start(Options::with_plugins(&[]).plugin_as("recharge", bad, None)).await;
        // The user already has money: the rollback must leave it exactly as it was.
        s.recharge_order("F000000001", "u1", 500).await;
        let xml = wechat_v2::paid_xml("F000000001", 500, "4200000101");
        let (st, body) = s.notify_v2(xml.clone()).await;
        assert_eq!(st, 200, "{bad}");
        assert_eq!(v2_return_code(&body), "FAIL", "{bad}: {body}");

        let order = s.order("F000000001").await;
        assert_eq!(order.status, status::UNPAID, "{bad}");
        assert_eq!(order.transaction_id, None, "{bad}");
        assert_eq!(order.handler_status, "failed", "{bad}");
        assert!(order.handler_result.is_some(), "{bad}");
        assert_eq!(
            s.document("users", "u1").await,
            None,
            "{bad}: no partial writes"
        );
        let tasks = s.app.store.list_tasks(None, 10).await.expect("tasks");
        assert!(
            tasks.is_empty(),
            "{bad}: the outbox rolled back too: {tasks:?}"
        );
        let n = s.notifications().await;
        assert_eq!(n[0].verdict, Verdict::Failed, "{bad}");

        // Ops fix the plugin; the provider retries the same notification.
        install_plugin(&s.plugins_dir(), "recharge", "recharge", None);
        s.reload_plugins().await;
        let (st, body) = s.notify_v2(xml.clone()).await;
        assert_eq!((st, body.as_str()), (200, SUCCESS), "{bad}");
        let (st, body) = s.notify_v2(xml).await;
        assert_eq!((st, body.as_str()), (200, SUCCESS), "{bad}");
        let order = s.order("F000000001").await;
        assert_eq!(order.status, status::PAID);
        assert_eq!(order.handler_status, "succeeded");
        assert_eq!(
            s.document("users", "u1").await,
            Some(json!({ "balance": 500 })),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_plugin_gets_an_error_for_what_it_was_not_granted() {
    let s = TestServer::start(Options::with_plugins(&["nosy"])).await;
    s.create_order(json!({
        "type": "nosy", "total_fee": 1, "user_id": "u1", "provider": "wechat-v2", "out_trade_no": "N000000001"
    }))
    .await;
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml("N000000001", 1, "4200000201"))
        .await;
    assert_eq!((st, body.as_str()), (200, SUCCESS));
    let outcome = s.order("N000000001").await.handler_result.expect("outcome");
    let text = outcome.to_string();
    assert!(
        outcome["db_secrets"]
            .as_str()
            .unwrap_or("")
            .starts_with("denied"),
        "db: {text}"
    );
    assert!(
        outcome["fs_read_dir"]
            .as_str()
            .unwrap_or("")
            .starts_with("error"),
        "fs: {text}"
    );
    assert!(
        outcome["fs_read_passwd"]
            .as_str()
            .unwrap_or("")
            .starts_with("error"),
        "fs: {text}"
    );
    assert_eq!(outcome["env_count"], json!(0), "env: {text}");
    assert!(
        outcome["tcp"].as_str().unwrap_or("").starts_with("error"),
        "tcp: {text}"
    );
}

#[tokio::test]
async fn goods_fulfils_the_order_decrements_stock_and_queues_a_message() {
    let s = TestServer::start(Options::with_plugins(&["goods"])).await;
    s.create_order(json!({
        "type": "goods", "total_fee": 9900, "user_id": "u7", "provider": "wechat-v2",
        "out_trade_no": "G000000001", "custom": { "goods_id": "sku-1", "quantity": 2 }
    }))
    .await;
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml("G000000001", 9900, "4200000301"))
        .await;
    assert_eq!((st, body.as_str()), (200, SUCCESS));
    assert_eq!(
        s.document("goods", "sku-1").await,
        Some(json!({ "stock": -2 }))
    );
    let fulfilled = s
        .document("goods_orders", "G000000001")
        .await
        .expect("goods order");
    assert_eq!(fulfilled["status"], "fulfilled");
    assert_eq!(fulfilled["quantity"], 2);
    let outcome = s.order("G000000001").await.handler_result.expect("outcome");
    assert_eq!(outcome["stock_short"], json!(true), "{outcome}");
    let tasks = s.app.store.list_tasks(None, 10).await.expect("tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].name, "send-message");
    assert_eq!(tasks[0].plugin, "goods");
    assert_eq!(tasks[0].out_trade_no.as_deref(), Some("G000000001"));
}

#[tokio::test]
async fn vip_extends_the_expiry_by_calendar_months_from_the_payment_time() {
    let s = TestServer::start(Options::with_plugins(&["vip"])).await;
    s.create_order(json!({
        "type": "vip", "total_fee": 3000, "user_id": "u8", "provider": "wechat-v2",
        "out_trade_no": "V000000001", "custom": { "months": 3 }
    }))
    .await;
    // time_end 2026-09-03 13:15:40 +08:00 → +3 months = 2026-12-03 13:15:40 +08:00.
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml("V000000001", 3000, "4200000401"))
        .await;
    assert_eq!((st, body.as_str()), (200, SUCCESS));
    let user = s.document("users", "u8").await.expect("user");
    assert_eq!(user["vip_expire"], json!(1_796_274_940_000_i64), "{user}");
}

/// A handler that never returns or eats memory fails its own call only.
#[tokio::test]
async fn runaway_handlers_fail_only_their_own_call() {
    let s = TestServer::start(
        Options::with_plugins(&["recharge"])
            .plugin_as("loop", "loop", Some("timeout_ms = 300\n"))
            .plugin_as("oom", "oom", Some("memory_mb = 16\n")),
    )
    .await;
    for (t, no) in [("loop", "L000000001"), ("oom", "O000000001")] {
        s.create_order(json!({ "type": t, "total_fee": 1, "user_id": "x", "provider": "wechat-v2", "out_trade_no": no }))
            .await;
    }
    s.recharge_order("R000000501", "u9", 42).await;
    let (l, o, r) = tokio::join!(
        s.notify_v2(wechat_v2::paid_xml("L000000001", 1, "4200000501")),
        s.notify_v2(wechat_v2::paid_xml("O000000001", 1, "4200000502")),
        s.notify_v2(wechat_v2::paid_xml("R000000501", 42, "4200000503")),
    );
    assert_eq!(v2_return_code(&l.1), "FAIL");
    assert_eq!(v2_return_code(&o.1), "FAIL");
    assert_eq!(r.1, SUCCESS);
    let lr = s
        .order("L000000001")
        .await
        .handler_result
        .expect("loop result");
    assert_eq!(lr["error"], "timeout", "{lr}");
    let or = s
        .order("O000000001")
        .await
        .handler_result
        .expect("oom result");
    assert_eq!(or["error"], "memory", "{or}");
    assert_eq!(
        s.document("users", "u9").await,
        Some(json!({ "balance": 42 }))
    );
}

/// Concurrent payments share transactions (group commit): a handler failing in the middle
/// of a batch aborts the batch's first run (no savepoints), and the run again with a
/// savepoint each rolls back that payment and its writes only.
#[tokio::test]
async fn a_failing_handler_in_a_shared_batch_rolls_back_only_its_own_payment() {
    let s = TestServer::start(Options::with_plugins(&["recharge"]).plugin_as(
        "flaky",
        "fail-always",
        None,
    ))
    .await;
    let mut sends = Vec::new();
    for i in 0..60 {
        let no = format!("M{i:09}");
        let (kind, user) = if i % 4 == 0 {
            ("flaky", "bad")
        } else {
            ("recharge", "good")
        };
        s.create_order(json!({
            "type": kind, "total_fee": 10, "user_id": user, "provider": "wechat-v2",
            "out_trade_no": no, "custom": { "recharge_balance": 10 }
        }))
        .await;
        sends.push(wechat_v2::paid_xml(&no, 10, &format!("TM{i}")));
    }
    let answers = futures::future::join_all(sends.into_iter().map(|x| s.notify_v2(x))).await;
    for (i, (_, body)) in answers.iter().enumerate() {
        let want = if i % 4 == 0 { "FAIL" } else { "SUCCESS" };
        assert_eq!(v2_return_code(body), want, "notification {i}");
    }
    for i in 0..60 {
        let o = s.order(&format!("M{i:09}")).await;
        assert_eq!(
            o.status,
            if i % 4 == 0 {
                status::UNPAID
            } else {
                status::PAID
            },
            "order {i}"
        );
    }
    assert_eq!(
        s.document("users", "good").await,
        Some(json!({ "balance": 450 }))
    );
    assert_eq!(
        s.document("users", "bad").await,
        None,
        "no partial writes of the failing handler"
    );
    assert!(s
        .app
        .store
        .list_tasks(None, 10)
        .await
        .expect("tasks")
        .is_empty());
}

/// A stand-in for a merchant's backend: answers every POST `{"code":0}` and records the
/// JSON bodies it received (`{"out_trade_no", "from"}` from the `sidefx` handler).
#[derive(Clone)]
struct Backend {
    received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    port: u16,
}

impl Backend {
    async fn start() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        let app = axum::Router::new().route(
            "/paid",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let log = log.clone();
                async move {
                    log.lock().expect("lock").push(body);
                    axum::Json(json!({ "code": 0 }))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.expect("backend serves") });
        Backend { received, port }
    }

    fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().expect("lock").clone()
    }

    /// A `sidefx` manifest allowing this backend, plus `extra` lines.
    fn manifest(&self, extra: &str) -> String {
        format!(
            "collections = []\nhttp_origins = [\"http://127.0.0.1:{p}\"]\n{extra}\n[config]\nbackend_url = \"http://127.0.0.1:{p}/paid\"\n",
            p = self.port
        )
    }
}

/// Creates a `sidefx`-style order of `plugin_type` whose custom asks for `custom`, and pays it;
/// returns the provider's answer (`SUCCESS` / `FAIL`).
async fn pay_sidefx(
    s: &TestServer,
    plugin_type: &str,
    no: &str,
    custom: serde_json::Value,
) -> String {
    s.create_order(json!({
        "type": plugin_type, "total_fee": 100, "user_id": "u1", "provider": "wechat-v2",
        "out_trade_no": no, "custom": custom
    }))
    .await;
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml(no, 100, &format!("42{no}")))
        .await;
    assert_eq!(st, 200, "{body}");
    v2_return_code(&body).to_owned()
}

/// `http` inside `handle-paid` (and `handle-refunded`) without `http_in_payment` is denied
/// with a message saying to enqueue a task; the handler passes the error on, so the payment
/// (refund) rolls back and the backend hears nothing. The same call from `run-task`, queued
/// by a payment of the same plugin, goes through.
#[tokio::test]
async fn http_inside_a_payment_is_refused_but_a_task_may_call_out() {
    let backend = Backend::start().await;
    let mut options =
        Options::with_plugins(&[]).plugin_as("sidefx", "sidefx", Some(&backend.manifest("")));
    options.extra_config = "[tasks]\npoll_ms = 20\n".into();
    let s = TestServer::start(options).await;

    assert_eq!(
        pay_sidefx(&s, "sidefx", "H000000001", json!({ "paid": "http" })).await,
        "FAIL"
    );
    let order = s.order("H000000001").await;
    assert_eq!(order.status, status::UNPAID);
    assert_eq!(order.transaction_id, None);
    assert_eq!(order.handler_status, "failed");
    let result = order.handler_result.expect("failure recorded");
    assert_eq!(result["error"], "http-denied", "{result}");
    let message = result["message"].as_str().unwrap_or("");
    assert!(
        message.contains("refused inside handle-paid")
            && message.contains("Enqueue a task")
            && message.contains("`http_in_payment = true` in sidefx.toml"),
        "{result}"
    );
    assert_eq!(s.notifications().await[0].verdict, Verdict::Failed);

    // The safe pattern: handle-paid queues a task, run-task calls the backend after commit.
    assert_eq!(
        pay_sidefx(
            &s,
            "sidefx",
            "H000000002",
            json!({ "paid": "task", "refunded": "http" })
        )
        .await,
        "SUCCESS"
    );
    assert_eq!(s.order("H000000002").await.status, status::PAID);
    wait_until(30, "the task to be done", || async {
        let tasks = s
            .app
            .store
            .list_tasks(Some("done"), 10)
            .await
            .expect("tasks");
        (!tasks.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        backend.received(),
        vec![json!({ "out_trade_no": "H000000002", "from": "run-task" })],
        "only the task reached the backend"
    );

    // handle-refunded is held to the same rule: the refund rolls back, the provider retries.
    let info = wechat_v2::refund_info("H000000002", "RF1", 100, 40, "42H000000002");
    let (st, body) = s
        .notify_v2(wechat_v2::refund_xml(&wechat_v2::req_info(
            &info,
            wechat_v2::API_KEY,
        )))
        .await;
    assert_eq!((st, v2_return_code(&body)), (200, "FAIL"), "{body}");
    let order = s.order("H000000002").await;
    assert_eq!((order.status, order.refund_fee), (status::PAID, 0));
    let refund = s
        .notifications()
        .await
        .pop()
        .expect("the refund notification");
    assert_eq!(refund.verdict, Verdict::Failed);
    let reason = refund.reason.unwrap_or_default();
    assert!(
        reason.contains("http-denied") && reason.contains("Enqueue a task"),
        "{reason}"
    );
    assert_eq!(backend.received().len(), 1, "{:?}", backend.received());
}

/// With `http_in_payment = true` the same call from `handle-paid` goes through and the
/// payment commits; `/api/admin/plugins` shows the opt-in (and the crypto grant) per type.
#[tokio::test]
async fn http_in_payment_opt_in_lets_the_call_through_and_is_listed() {
    let backend = Backend::start().await;
    let s = TestServer::start(
        Options::with_plugins(&[])
            .plugin_as(
                "sidefx",
                "sidefx",
                Some(&backend.manifest("http_in_payment = true")),
            )
            .plugin_as("plain", "sidefx", Some(&backend.manifest("crypto = true"))),
    )
    .await;
    assert_eq!(
        pay_sidefx(&s, "sidefx", "H000000011", json!({ "paid": "http" })).await,
        "SUCCESS"
    );
    let order = s.order("H000000011").await;
    assert_eq!(order.status, status::PAID);
    assert_eq!(order.handler_result, Some(json!({ "status": 200 })));
    assert_eq!(
        backend.received(),
        vec![json!({ "out_trade_no": "H000000011", "from": "handle-paid" })]
    );

    let (code, list) = s.api("GET", "/api/admin/plugins", None).await;
    assert_eq!(code, 200, "{list}");
    let of = |t: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|p| p["type"] == t))
            .cloned()
            .unwrap_or_else(|| panic!("{t} listed: {list}"))
    };
    assert_eq!(
        (&of("sidefx")["http_in_payment"], &of("sidefx")["crypto"]),
        (&json!(true), &json!(false)),
        "{list}"
    );
    assert_eq!(
        (&of("plain")["http_in_payment"], &of("plain")["crypto"]),
        (&json!(false), &json!(true)),
        "{list}"
    );
}

/// `crypto` keyed by the account's notify key needs `crypto = true`: without it the call is
/// denied naming the key, and the payment rolls back; with it the signature is the HMAC of
/// the notify key.
#[tokio::test]
async fn keyed_crypto_needs_the_manifest_grant() {
    use hmac::{Hmac, Mac};

    let s = TestServer::start(
        Options::with_plugins(&[])
            .plugin_as("sidefx", "sidefx", Some("collections = []\n"))
            .plugin_as(
                "signer",
                "sidefx",
                Some("collections = []\ncrypto = true\n"),
            ),
    )
    .await;
    assert_eq!(
        pay_sidefx(&s, "sidefx", "C000000001", json!({ "paid": "crypto" })).await,
        "FAIL"
    );
    let order = s.order("C000000001").await;
    assert_eq!(order.status, status::UNPAID);
    let result = order.handler_result.expect("failure recorded");
    assert_eq!(result["error"], "crypto-denied", "{result}");
    assert!(
        result["message"]
            .as_str()
            .unwrap_or("")
            .contains("set `crypto = true` in sidefx.toml"),
        "{result}"
    );

    assert_eq!(
        pay_sidefx(&s, "signer", "C000000002", json!({ "paid": "crypto" })).await,
        "SUCCESS"
    );
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"0123456789abcdef0123456789abcdef")
        .expect("key");
    mac.update(b"C000000002");
    assert_eq!(
        s.order("C000000002").await.handler_result,
        Some(json!({ "sig": hex::encode(mac.finalize().into_bytes()) }))
    );
}
