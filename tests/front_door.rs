//! The front door (issue 21), tried from outside as an attacker would: a web page that
//! reaches a tokenless host through DNS rebinding or a cross-site form, a console session
//! carried to another host or past a token change, strangers inventing provider names or
//! sending forgeries by the thousand, and what failure answers give away.

use std::collections::BTreeMap;

use paynotify_tests::{metric, v2_return_code, wechat_v2, Options, TestServer, TOKEN};
use serde_json::json;

/// A client that does not follow redirects (sign-in answers with one).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// `GET /api/orders` with this `Host` (and `Origin`, if any); the status.
async fn list_orders(s: &TestServer, host: &str, origin: Option<&str>) -> u16 {
    let mut req = client()
        .get(s.url("/api/orders"))
        .header("host", host)
        .bearer_auth(TOKEN);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.expect("call").status().as_u16()
}

/// `POST /api/orders` creating order `no`, with this `Host` and `Origin`; the status.
async fn create_order(s: &TestServer, no: &str, host: &str, origin: Option<&str>) -> u16 {
    let mut req = client()
        .post(s.url("/api/orders"))
        .header("host", host)
        .bearer_auth(TOKEN)
        .json(&json!({
            "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "wechat-v2",
            "out_trade_no": no
        }));
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.send().await.expect("call").status().as_u16()
}

/// Posts the sign-in form to `s` with this `Host` and `Origin`: the status and the
/// session cookie (`paynotify_console=…`) if one was set.
async fn sign_in(s: &TestServer, host: &str, origin: &str) -> (u16, Option<String>) {
    let r = client()
        .post(s.url("/console/login"))
        .header("host", host)
        .header("origin", origin)
        .form(&[("token", TOKEN), ("next", "/console/orders")])
        .send()
        .await
        .expect("sign in");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    (r.status().as_u16(), cookie)
}

/// `GET /console/orders` on `s` with a session cookie: 200 when the session is accepted,
/// 303 (to the sign-in form) when it is not.
async fn console_orders(s: &TestServer, cookie: &str) -> u16 {
    client()
        .get(s.url("/console/orders"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("get")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_tokenless_host_answers_only_to_its_own_names() {
    let s = TestServer::start(Options::with_plugins(&["recharge"]).without_token()).await;
    let port = s.addr.port();
    let ours = format!("127.0.0.1:{port}");
    let page = format!("http://127.0.0.1:{port}");
    let rebound = format!("evil.example:{port}");
    let rebound_page = format!("http://evil.example:{port}");

    assert_eq!(list_orders(&s, &ours, None).await, 200);
    assert_eq!(
        list_orders(&s, &format!("localhost:{port}"), None).await,
        200
    );
    assert_eq!(list_orders(&s, &format!("[::1]:{port}"), None).await, 200);
    // DNS rebinding: the page's own name in Host, its own origin in Origin.
    assert_eq!(list_orders(&s, &rebound, Some(&rebound_page)).await, 421);
    assert_eq!(list_orders(&s, &rebound, None).await, 421);
    // A loopback name on another port is another origin (another local web app).
    assert_eq!(
        list_orders(&s, &format!("localhost:{}", port ^ 1), None).await,
        421
    );
    assert_eq!(create_order(&s, "FD00000001", &rebound, None).await, 421);
    // A cross-site form or fetch from any page: our Host, their Origin.
    assert_eq!(
        create_order(&s, "FD00000002", &ours, Some("http://evil.example")).await,
        403
    );
    assert_eq!(
        create_order(
            &s,
            "FD00000003",
            &ours,
            Some(&format!("http://localhost:{}", port ^ 1))
        )
        .await,
        403
    );
    let reload = client()
        .post(s.url("/api/admin/plugins/reload"))
        .header("host", &rebound)
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status().as_u16(), 421);
    for refused in ["FD00000001", "FD00000002", "FD00000003"] {
        let (st, _) = s.api("GET", &format!("/api/orders/{refused}"), None).await;
        assert_eq!(st, 404, "{refused} was not created");
    }
    // Our own pages, and tools that send no Origin, still work.
    assert_eq!(
        create_order(&s, "FD00000004", &ours, Some(&page)).await,
        201
    );
    assert_eq!(create_order(&s, "FD00000005", &ours, None).await, 201);

    // The console: the rebound page cannot even see the sign-in form, nor sign in by
    // posting with its own origin (the old check compared Origin with that same Host).
    let form = client()
        .get(s.url("/console/login"))
        .header("host", &rebound)
        .send()
        .await
        .expect("form");
    assert_eq!(form.status().as_u16(), 421);
    assert_eq!(sign_in(&s, &rebound, &rebound_page).await, (421, None));
    assert_eq!(sign_in(&s, &ours, "http://evil.example").await.0, 403);
    let (st, cookie) = sign_in(&s, &ours, &page).await;
    assert_eq!(st, 303);
    let cookie = cookie.expect("a session");
    // A signed-in session's buttons refuse a page of another origin, even one posting
    // under our Host.
    let html = client()
        .get(s.url("/console/plugins"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    let at = html.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    let csrf = &html[at..at + html[at..].find('"').expect("end")];
    for (host, origin, expected) in [
        (ours.as_str(), rebound_page.as_str(), 403),
        (rebound.as_str(), rebound_page.as_str(), 421),
        (ours.as_str(), page.as_str(), 200),
    ] {
        let r = client()
            .post(s.url("/console/plugins/reload"))
            .header("host", host)
            .header("origin", origin)
            .header("cookie", &cookie)
            .form(&[("csrf", csrf)])
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), expected, "{host} {origin}");
    }
    let text = s.metrics_text().await;
    for reason in ["host", "origin"] {
        let n = metric(
            &text,
            "paynotify_front_door_refused_total",
            &[("reason", reason)],
        );
        assert!(n.unwrap_or(0.0) >= 2.0, "{reason}: {n:?}");
    }
}

#[tokio::test]
async fn listed_names_are_ours_and_a_token_host_does_not_check_api_hosts() {
    let mut options = Options::with_plugins(&["recharge"]).without_token();
    options.server_config = "allowed_hosts = [\"pay.example.test\"]".into();
    let s = TestServer::start(options).await;
    let port = s.addr.port();
    assert_eq!(list_orders(&s, "pay.example.test", None).await, 200);
    assert_eq!(
        list_orders(&s, &format!("pay.example.test:{port}"), None).await,
        200
    );
    assert_eq!(list_orders(&s, "other.example.test", None).await, 421);
    // Behind a TLS proxy at that name: its pages sign in.
    let (st, cookie) = sign_in(&s, "pay.example.test", "https://pay.example.test").await;
    assert_eq!(st, 303);
    assert!(cookie.is_some());

    // With a token, /api is for whoever holds it, under any name (a merchant backend
    // may use an internal one); the console still answers to its own names only.
    let t = TestServer::start(Options::with_plugins(&["recharge"]).with_token()).await;
    assert_eq!(list_orders(&t, "paynotify.internal:8080", None).await, 200);
    let (st, _) = sign_in(&t, "evil.example", "http://evil.example").await;
    assert_eq!(st, 421);
}

#[tokio::test]
async fn console_sessions_are_bound_to_the_credential_that_made_them() {
    // Host A has no token; B, C and D share its database with tokens.
    let a = TestServer::start(Options::with_plugins(&["recharge"]).without_token()).await;
    let on_a = |t: &'static str| {
        Options::with_plugins(&["recharge"])
            .token(t)
            .database_url(Some(a.database_url.clone()))
    };
    let b = TestServer::start(on_a("token-one")).await;
    let page = |s: &TestServer| format!("http://{}", s.addr);
    let host = |s: &TestServer| s.addr.to_string();

    let (st, a_session) = sign_in(&a, &host(&a), &page(&a)).await;
    assert_eq!(st, 303);
    let a_session = a_session.expect("session");
    assert_eq!(console_orders(&a, &a_session).await, 200);
    // A tokenless session is worth nothing on a host that has a token.
    assert_eq!(console_orders(&b, &a_session).await, 303);

    // B's session (token-one) works on another host with the same token…
    let r = client()
        .post(b.url("/console/login"))
        .header("origin", page(&b))
        .form(&[("token", "token-one"), ("next", "/console/orders")])
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status().as_u16(), 303);
    let b_session = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("cookie")
        .to_owned();
    assert_eq!(console_orders(&b, &b_session).await, 200);
    let c = TestServer::start(on_a("token-one")).await;
    assert_eq!(console_orders(&c, &b_session).await, 200);
    // …but not once the token has changed (a restart with a new one), nor on a host
    // without a token.
    drop(b);
    let d = TestServer::start(on_a("token-two")).await;
    assert_eq!(console_orders(&d, &b_session).await, 303);
    assert_eq!(console_orders(&a, &b_session).await, 303);
    let text = d.metrics_text().await;
    let refused = metric(
        &text,
        "paynotify_front_door_refused_total",
        &[("reason", "session")],
    );
    assert!(refused.unwrap_or(0.0) >= 3.0, "{refused:?}");
}

#[tokio::test]
async fn names_not_configured_get_404_and_nothing_is_stored() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let before = s.metrics_text().await;
    let unrouted = |text: &str, reason: &str| {
        metric(
            text,
            "paynotify_notifications_unrouted_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    let big = "x".repeat(60 * 1024);
    for path in [
        "/notify/no-such-provider",
        "/notify/alipay",
        "/notify/wechat-v3",
        "/notify/cloudpay/default",
        "/notify/wechat-v2/no-such-account",
        "/notify/wechat-v2/..%2Fdefault",
    ] {
        let (st, body) = s.notify(path, "text/xml", big.clone()).await;
        assert_eq!(st, 404, "{path}: {body}");
        assert_eq!(body, "unknown or unconfigured provider", "{path}");
    }
    assert!(s.notifications().await.is_empty(), "nothing stored");
    let after = s.metrics_text().await;
    assert!(unrouted(&after, "provider") >= unrouted(&before, "provider") + 4.0);
    assert!(unrouted(&after, "account") >= unrouted(&before, "account") + 2.0);

    // A configured account by name still gets through.
    s.recharge_order("FD00000010", "u", 100).await;
    let (st, body) = s
        .notify(
            "/notify/wechat-v2/default",
            "text/xml",
            wechat_v2::paid_xml("FD00000010", 100, "4200000010"),
        )
        .await;
    assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
}

/// The `return_msg` of a WeChat v2 answer.
fn return_msg(body: &str) -> &str {
    let start = body.find("<return_msg><![CDATA[").map(|i| i + 21);
    start
        .and_then(|s| body[s..].find("]]>").map(|e| &body[s..s + e]))
        .unwrap_or("")
}

#[tokio::test]
async fn failure_answers_say_no_more_than_a_provider_needs() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    s.recharge_order("FD00000020", "u", 100).await;
    let fields = wechat_v2::paid("FD00000020", 100, "4200000020");
    let mut other_merchant: BTreeMap<String, String> = fields.clone();
    other_merchant.insert("mch_id".into(), "19999999".into());
    let forged = [
        // A bad signature.
        wechat_v2::xml(&fields, "not-the-key-00000000000000000000"),
        // An account not configured here, signed with its own key.
        wechat_v2::xml(&other_merchant, wechat_v2::API_KEY),
        // Not XML at all.
        "<xml><return_code>SUCC".to_owned(),
    ];
    let mut answers = Vec::new();
    for body in forged {
        answers.push(s.notify_v2(body).await);
    }
    for (st, body) in &answers {
        assert_eq!(*st, 200);
        assert_eq!(v2_return_code(body), "FAIL");
        assert_eq!(return_msg(body), "verification failed", "{body}");
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every refusal looks alike: {answers:?}"
    );
    // The detailed reasons are kept for ops.
    let stored = s.notifications_of("wechat-v2").await;
    let reasons: Vec<&str> = stored.iter().filter_map(|n| n.reason.as_deref()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("signature")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("account")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("malformed")),
        "{reasons:?}"
    );

    // A verified notification for an order unknown here: a category, not the details.
    let (_, body) = s
        .notify_v2(wechat_v2::paid_xml("FD99999999", 100, "4200000021"))
        .await;
    assert_eq!(
        return_msg(&body),
        "order not found or not matching",
        "{body}"
    );
    let (_, body) = s
        .notify_v2(wechat_v2::paid_xml("FD00000020", 99, "4200000022"))
        .await;
    assert_eq!(
        return_msg(&body),
        "order not found or not matching",
        "{body}"
    );
}

#[tokio::test]
async fn one_address_cannot_fill_the_table_with_forgeries() {
    let mut options = Options::with_plugins(&["recharge"]);
    options.server_config = "max_rejections_per_minute = 3".into();
    let s = TestServer::start(options).await;
    s.recharge_order("FD00000030", "u", 300).await;
    let forged = |n: u32| {
        let fields = wechat_v2::paid("FD00000030", 300, &format!("42000000{n:02}"));
        wechat_v2::xml(&fields, "not-the-key-00000000000000000000")
    };
    for n in 0..3 {
        let (st, body) = s.notify_v2(forged(n)).await;
        assert_eq!((st, v2_return_code(&body)), (200, "FAIL"));
    }
    assert_eq!(
        s.notifications().await.len(),
        3,
        "the first three are stored"
    );
    for n in 3..8 {
        let (st, body) = s.notify_v2(forged(n)).await;
        assert_eq!(st, 429, "{body}");
        assert_eq!(v2_return_code(&body), "FAIL");
    }
    assert_eq!(s.notifications().await.len(), 3, "the rest are not");
    // A content type no provider sends counts as a failure too, and is refused now.
    let (st, _) = s
        .notify("/notify/wechat-v2", "application/json", forged(9))
        .await;
    assert_eq!(st, 429);

    // The real payment from the same address goes through, stored and applied.
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml("FD00000030", 300, "4200000030"))
        .await;
    assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
    assert_eq!(s.order("FD00000030").await.status, 1);
    assert_eq!(s.notifications().await.len(), 4);
    let throttled = metric(
        &s.metrics_text().await,
        "paynotify_notifications_throttled_total",
        &[("provider", "wechat-v2")],
    );
    assert!(throttled.unwrap_or(0.0) >= 6.0, "{throttled:?}");
}
