//! A misbehaving handler must not starve the others (threat model, attacker 5): payment
//! calls run under their own, shorter time limit, and a type whose payment calls keep
//! timing out fails fast — the failure answer without running it, so the provider
//! retries later — for a cool-down, then one call is tried again. Real server, real
//! `loop` and `recharge` components, real signed WeChat Pay v2 notifications; on both
//! backends.

use paynotify::store::status;
use paynotify_tests::{v2_return_code, wait_until, wechat_v2, Options, TestServer};
use serde_json::{json, Value};

const SUCCESS: &str = "SUCCESS";

/// The loop order `n`'s payment.
fn loop_paid(n: u32) -> String {
    wechat_v2::paid_xml(&format!("L{n:09}"), 1, &format!("4200L{n}"))
}

/// `loop`'s entry of `GET /api/admin/plugins`.
async fn loop_status(s: &TestServer) -> Value {
    let (code, list) = s.api("GET", "/api/admin/plugins", None).await;
    assert_eq!(code, 200, "{list}");
    list.as_array()
        .and_then(|a| a.iter().find(|p| p["type"] == "loop").cloned())
        .unwrap_or_else(|| panic!("loop is listed: {list}"))
}

/// What the last payment call of loop order `n` came to.
async fn loop_result(s: &TestServer, n: u32) -> Value {
    s.order(&format!("L{n:09}"))
        .await
        .handler_result
        .expect("a handler result")
}

#[tokio::test]
async fn a_type_that_keeps_timing_out_fails_fast_for_a_cooldown_then_is_tried_again() {
    let mut options = Options::with_plugins(&["recharge"]).plugin_as("loop", "loop", None);
    options.plugins_config = "payment_timeout_ms = 300\nbreaker_cooldown_secs = 2\n".into();
    let s = TestServer::start(options).await;
    for n in 1..=6 {
        s.create_order(json!({
            "type": "loop", "total_fee": 1, "user_id": "spinner", "provider": "wechat-v2",
            "out_trade_no": format!("L{n:09}"), "custom": {}
        }))
        .await;
    }
    let listed = loop_status(&s).await;
    assert_eq!(listed["payment_timeout_ms"], 300, "{listed}");
    assert_eq!(
        listed["timeout_ms"], 4000,
        "run-task keeps the full limit: {listed}"
    );

    // Three timeouts in a row: each ran to the payment limit and rolled back.
    for n in 1..=3 {
        let (_, body) = s.notify_v2(loop_paid(n)).await;
        assert_eq!(v2_return_code(&body), "FAIL", "{body}");
        let r = loop_result(&s, n).await;
        assert_eq!(r["error"], "timeout", "call {n}: {r}");
    }
    let listed = loop_status(&s).await;
    assert_eq!(listed["breaker"]["timeouts_in_a_row"], 3, "{listed}");
    assert!(listed["breaker"]["failing_fast_until"].is_i64(), "{listed}");

    // Now the type fails fast: the handler is not run, the provider is told to retry.
    let (_, body) = s.notify_v2(loop_paid(4)).await;
    assert_eq!(v2_return_code(&body), "FAIL", "{body}");
    let r = loop_result(&s, 4).await;
    assert_eq!(r["error"], "failing-fast", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap_or("")
            .contains("failing fast until"),
        "{r}"
    );
    // Other types are not affected.
    s.recharge_order("R000000001", "u1", 50).await;
    let (_, body) = s
        .notify_v2(wechat_v2::paid_xml("R000000001", 50, "4200R1"))
        .await;
    assert_eq!(v2_return_code(&body), SUCCESS, "{body}");
    assert_eq!(
        s.document("users", "u1").await,
        Some(json!({ "balance": 50 }))
    );

    // After the cool-down one call runs again; it times out too, so the type fails fast
    // again at once.
    wait_until(30, "the cool-down to end", || async {
        loop_status(&s).await["breaker"]["failing_fast_until"]
            .is_null()
            .then_some(())
    })
    .await;
    let (_, body) = s.notify_v2(loop_paid(5)).await;
    assert_eq!(v2_return_code(&body), "FAIL", "{body}");
    assert_eq!(loop_result(&s, 5).await["error"], "timeout");
    let (_, body) = s.notify_v2(loop_paid(6)).await;
    assert_eq!(v2_return_code(&body), "FAIL", "{body}");
    assert_eq!(loop_result(&s, 6).await["error"], "failing-fast");

    for n in 1..=6 {
        let o = s.order(&format!("L{n:09}")).await;
        assert_eq!(o.status, status::UNPAID, "L{n:09} must stay unpaid");
    }
    // Counted for alerting.
    let metrics = s.metrics_text().await;
    let counted = |name: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(name) && l.contains("plugin=\"loop\"") && !l.ends_with(" 0"))
    };
    assert!(
        counted("paynotify_handler_breaker_trips_total"),
        "{metrics}"
    );
    assert!(
        counted("paynotify_handler_breaker_fast_failures_total"),
        "{metrics}"
    );
}
