//! Operating the host: `/metrics`, `/readyz`, the order event stream, order listing and
//! expiry, and the `paynotify` command line (the real binary: `PAYNOTIFY_BIN`, which
//! `cargo xtask test` builds, or `target/debug/paynotify`).

use std::collections::BTreeSet;
use std::process::{Output, Stdio};

use paynotify_tests::process::{ok_stdout, paynotify_bin, paynotify_cli, HostProcess};
use paynotify_tests::{
    metric, v2_return_code, wait_until, wechat_v2, EventStream, Options, TestServer, TOKEN,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Helpers

/// Runs the CLI against a test server's configuration (and so its database).
async fn cli(s: &TestServer, args: &[&str]) -> Output {
    paynotify_cli(&s.dir.path().join("paynotify.toml"), args, &[]).await
}

/// Stdout of a `--json` command, parsed.
fn ok_json(out: &Output, what: &str) -> Value {
    let text = ok_stdout(out, what);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
}

/// Scrapes `/metrics` (with no token: it is not under /api).
async fn scrape(s: &TestServer) -> String {
    let resp = s.http.get(s.url("/metrics")).send().await.expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("text/plain"), "content type {ct}");
    resp.text().await.expect("metrics text")
}

/// A recharge-style order of handler type `order_type`.
async fn order_of(s: &TestServer, order_type: &str, no: &str, user: &str, fen: i64) -> Value {
    s.create_order(json!({
        "type": order_type, "total_fee": fen, "user_id": user, "provider": "wechat-v2",
        "out_trade_no": no, "custom": { "recharge_balance": fen }
    }))
    .await
}

/// Pays `no` with a signed WeChat v2 notification; asserts WeChat is told SUCCESS.
async fn pay(s: &TestServer, no: &str, fen: i64) {
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml(no, fen, &format!("42{no}")))
        .await;
    assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
}

async fn watch(s: &TestServer, no: &str) -> EventStream {
    let response = s
        .http
        .get(s.url(&format!("/api/orders/{no}/events")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("events");
    assert_eq!(response.status().as_u16(), 200);
    let ct = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("text/event-stream"), "content type {ct}");
    EventStream::new(response)
}

// ---------------------------------------------------------------------------------------
// /metrics, /readyz

#[tokio::test]
async fn metrics_count_notifications_handler_calls_plugin_loads_and_tasks() {
    // Handler types unique to this test, so its series are its own even though every
    // test server in this process shares one recorder.
    let s = TestServer::start(
        Options::with_plugins(&[])
            .plugin_as("opsmetrics", "recharge", None)
            .plugin_as("opsgoods", "goods", None),
    )
    .await;
    let before = scrape(&s).await;
    let counted = |text: &str, verdict: &str| {
        metric(
            text,
            "paynotify_notifications_total",
            &[("provider", "wechat-v2"), ("verdict", verdict)],
        )
        .unwrap_or(0.0)
    };

    order_of(&s, "opsmetrics", "M000000001", "um", 5).await;
    pay(&s, "M000000001", 5).await;
    pay(&s, "M000000001", 5).await; // a duplicate
    let forged = wechat_v2::xml(&wechat_v2::paid("M000000001", 5, "x"), "wrong-key");
    s.notify_v2(forged).await;
    s.create_order(json!({
        "type": "opsgoods", "total_fee": 3, "user_id": "ug", "provider": "wechat-v2",
        "out_trade_no": "M000000002", "custom": { "goods_id": "g1" }
    }))
    .await;
    pay(&s, "M000000002", 3).await;
    std::fs::write(s.plugins_dir().join("opsbad.wasm"), b"not a component").expect("write");
    s.reload_plugins().await;

    // The goods task runs in the background; its run-task call is timed too.
    let text = wait_until(
        30,
        "the goods task's run-task call to be counted",
        || async {
            let text = scrape(&s).await;
            metric(
                &text,
                "paynotify_handler_duration_seconds_count",
                &[
                    ("plugin", "opsgoods"),
                    ("call", "run_task"),
                    ("outcome", "ok"),
                ],
            )
            .map(|_| text)
        },
    )
    .await;
    // Other tests in this process count notifications too: compare with "before".
    assert!(
        counted(&text, "paid") >= counted(&before, "paid") + 2.0,
        "{text}"
    );
    assert!(counted(&text, "duplicate") > counted(&before, "duplicate"));
    assert!(counted(&text, "rejected") > counted(&before, "rejected"));
    let calls = |plugin: &str, call: &str| {
        metric(
            &text,
            "paynotify_handler_duration_seconds_count",
            &[("plugin", plugin), ("call", call), ("outcome", "ok")],
        )
    };
    assert_eq!(calls("opsmetrics", "handle_paid"), Some(1.0), "{text}");
    assert_eq!(calls("opsgoods", "handle_paid"), Some(1.0));
    assert_eq!(calls("opsgoods", "run_task"), Some(1.0));
    // A real histogram (buckets), not a summary.
    assert!(text.contains("# TYPE paynotify_handler_duration_seconds histogram"));
    assert_eq!(
        metric(
            &text,
            "paynotify_handler_duration_seconds_bucket",
            &[
                ("plugin", "opsmetrics"),
                ("call", "handle_paid"),
                ("le", "+Inf")
            ],
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "paynotify_plugin_loads_total",
            &[("plugin", "opsmetrics")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "paynotify_plugin_load_failures_total",
            &[("plugin", "opsbad")]
        ),
        Some(1.0)
    );
    assert!(metric(&text, "paynotify_uptime_seconds", &[]).is_some_and(|v| v >= 0.0));
    assert!(text.contains("# HELP paynotify_notifications_total"));

    // Task queue depth, counted when scraped: a server whose worker is off keeps the
    // goods task pending. (Retried: another test's scrape may refresh the shared gauge
    // from its own database between this scrape's count and its rendering.)
    let mut idle = Options::with_plugins(&[]).plugin_as("opsgoods", "goods", None);
    idle.extra_config = "[tasks]\nenabled = false\n".into();
    let idle = TestServer::start(idle).await;
    idle.create_order(json!({
        "type": "opsgoods", "total_fee": 4, "user_id": "ug", "provider": "wechat-v2",
        "out_trade_no": "M000000003", "custom": { "goods_id": "g1" }
    }))
    .await;
    pay(&idle, "M000000003", 4).await;
    wait_until(30, "the queue gauge to show one pending task", || async {
        let text = scrape(&idle).await;
        let depth = |status| metric(&text, "paynotify_tasks", &[("status", status)]);
        (depth("pending") == Some(1.0)
            && depth("running") == Some(0.0)
            && depth("dead") == Some(0.0))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn readyz_fails_while_a_plugin_file_is_broken_and_nothing_of_its_type_serves() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let readyz = || async {
        let resp = s.http.get(s.url("/readyz")).send().await.expect("readyz");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.expect("readyz JSON"))
    };
    let (st, v) = readyz().await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["plugins"], 1);
    let health = s.http.get(s.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200);

    // A new type whose file does not load: nothing of it serves, so not ready.
    let broken = s.plugins_dir().join("opsbroken.wasm");
    std::fs::write(&broken, b"\0asm garbage").expect("write");
    s.reload_plugins().await;
    let (st, v) = readyz().await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("`opsbroken`"),
        "{v}"
    );
    assert_eq!(v["failing_plugins"][0]["type"], "opsbroken");
    assert!(v["failing_plugins"][0]["error"]
        .as_str()
        .unwrap_or("")
        .contains("opsbroken.wasm"));

    // A broken update of a serving type: the previous version serves, so that type does
    // not make the host unready.
    std::fs::write(s.plugins_dir().join("recharge.wasm"), b"half a file").expect("write");
    s.reload_plugins().await;
    let (st, v) = readyz().await;
    assert_eq!(st, 503);
    let failing: Vec<&str> = v["failing_plugins"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert_eq!(failing, ["opsbroken"], "{v}");

    // Removing the broken file removes the problem.
    std::fs::remove_file(&broken).expect("rm");
    s.reload_plugins().await;
    let (st, v) = readyz().await;
    assert_eq!(st, 200, "{v}");
}

// ---------------------------------------------------------------------------------------
// Order events

#[tokio::test]
async fn order_events_stream_the_order_and_every_change_across_hosts() {
    let a = TestServer::start(Options::with_plugins(&["recharge"]).with_token()).await;
    // A second host on the same database: the watcher is on one, the payment on the other.
    let b = TestServer::start(
        Options::with_plugins(&["recharge"])
            .with_token()
            .database_url(Some(a.database_url.clone())),
    )
    .await;
    order_of(&a, "recharge", "W000000001", "uw", 9).await;

    let unknown = b
        .http
        .get(b.url("/api/orders/NOPE000001/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("call");
    assert_eq!(unknown.status().as_u16(), 404);
    let no_token = b
        .http
        .get(b.url("/api/orders/W000000001/events"))
        .send()
        .await
        .expect("call");
    assert_eq!(no_token.status().as_u16(), 401);

    let mut events = watch(&b, "W000000001").await;
    let first = events.next().await.expect("the current order at once");
    assert_eq!(first["out_trade_no"], "W000000001");
    assert_eq!(first["status"], 0);
    assert_eq!(first["handler_status"], "pending");
    let watchers = |text: &str| metric(text, "paynotify_order_watchers", &[]);
    assert!(watchers(&scrape(&b).await).is_some_and(|n| n >= 1.0));

    pay(&a, "W000000001", 9).await;
    // Paid and the handler's result are one commit: one event with both.
    let paid = events.next().await.expect("the payment");
    assert_eq!(paid["status"], 1, "{paid}");
    assert_eq!(paid["handler_status"], "succeeded");
    assert_eq!(paid["handler_result"], json!({ "balance": 9 }));

    // The client leaves: its stream, and its polling, stop.
    drop(events);
    wait_until(30, "the watcher to be gone", || async {
        (watchers(&scrape(&b).await) == Some(0.0)).then_some(())
    })
    .await;

    // A stream open when its server shuts down ends, rather than holding the shutdown.
    let mut events = watch(&b, "W000000001").await;
    assert_eq!(events.next().await.expect("current")["status"], 1);
    drop(b);
    assert!(events.next().await.is_none(), "stream ends at shutdown");
}

// ---------------------------------------------------------------------------------------
// Listing orders and notifications (API and CLI)

#[tokio::test]
async fn orders_list_pages_with_a_cursor_and_filters_in_the_api_and_the_cli() {
    let s = TestServer::start(
        Options::with_plugins(&["recharge"]).plugin_as("opsother", "recharge", None),
    )
    .await;
    let mut created = Vec::new();
    for i in 0..7 {
        let (order_type, user) = if i % 3 == 0 {
            ("opsother", "ub")
        } else {
            ("recharge", "ua")
        };
        let no = format!("L00000000{i}");
        created.push(order_of(&s, order_type, &no, user, 10 + i).await);
    }
    pay(&s, "L000000001", 11).await;
    pay(&s, "L000000003", 13).await;

    // Newest first: created_at, then out_trade_no, both descending.
    let mut expected: Vec<(i64, String)> = created
        .iter()
        .map(|o| {
            (
                o["created_at"].as_i64().expect("created_at"),
                o["out_trade_no"].as_str().expect("no").to_owned(),
            )
        })
        .collect();
    expected.sort();
    expected.reverse();
    let expected: Vec<String> = expected.into_iter().map(|(_, n)| n).collect();

    let numbers = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("list")
            .iter()
            .map(|o| o["out_trade_no"].as_str().expect("no").to_owned())
            .collect()
    };
    let mut seen = Vec::new();
    let mut path = "/api/orders?limit=3".to_owned();
    loop {
        let (st, page) = s.api("GET", &path, None).await;
        assert_eq!(st, 200, "{page}");
        let list = page.as_array().expect("list");
        seen.extend(numbers(&page));
        if list.len() < 3 {
            break;
        }
        let last = list.last().expect("last");
        path = format!(
            "/api/orders?limit=3&before={}:{}",
            last["created_at"],
            last["out_trade_no"].as_str().expect("no")
        );
    }
    assert_eq!(seen, expected, "pages in order, none repeated or skipped");

    let (_, paid) = s.api("GET", "/api/orders?status=paid", None).await;
    assert_eq!(
        numbers(&paid).into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["L000000001".to_owned(), "L000000003".to_owned()])
    );
    let (_, by_code) = s.api("GET", "/api/orders?status=1", None).await;
    assert_eq!(by_code, paid);
    let (_, other) = s.api("GET", "/api/orders?type=opsother", None).await;
    assert_eq!(numbers(&other), ["L000000006", "L000000003", "L000000000"]);
    let (_, ub_paid) = s.api("GET", "/api/orders?user=ub&status=1", None).await;
    assert_eq!(numbers(&ub_paid), ["L000000003"]);
    for bad in [
        "/api/orders?status=lost",
        "/api/orders?before=yesterday",
        "/api/orders?colour=red",
    ] {
        let (st, v) = s.api("GET", bad, None).await;
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }

    // The CLI reads the same database.
    let first = ok_json(
        &cli(&s, &["--json", "orders", "list", "--limit", "3"]).await,
        "orders list",
    );
    assert_eq!(numbers(&first), expected[..3]);
    let paid_cli = ok_json(
        &cli(&s, &["orders", "list", "--status", "paid", "--json"]).await,
        "orders list --status paid",
    );
    assert_eq!(paid_cli, paid);
    let table = ok_stdout(
        &cli(&s, &["orders", "list", "--limit", "3"]).await,
        "orders list",
    );
    assert!(table.starts_with("OUT_TRADE_NO"), "{table}");
    assert!(
        table.contains(&expected[0]) && !table.contains(&expected[3]),
        "{table}"
    );
    let cursor = table
        .lines()
        .find_map(|l| l.split("--before ").nth(1))
        .expect("a next-page hint")
        .trim()
        .to_owned();
    let next = ok_json(
        &cli(
            &s,
            &[
                "orders", "list", "--limit", "3", "--before", &cursor, "--json",
            ],
        )
        .await,
        "orders list --before",
    );
    assert_eq!(numbers(&next), expected[3..6]);
    let closed = ok_stdout(
        &cli(&s, &["orders", "list", "--status", "-1"]).await,
        "orders list --status -1",
    );
    assert_eq!(closed.trim(), "no orders match");
    let shown = ok_stdout(
        &cli(&s, &["orders", "show", "L000000001"]).await,
        "orders show",
    );
    assert!(
        shown.contains("1 (paid)") && shown.contains("succeeded"),
        "{shown}"
    );
    let bad = cli(&s, &["orders", "list", "--status", "lost"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown status"));
}

#[tokio::test]
async fn notifications_list_by_time_in_the_api_and_the_cli() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    order_of(&s, "recharge", "T000000001", "ut", 7).await;
    pay(&s, "T000000001", 7).await;
    let first = s.notifications().await.pop().expect("one");
    // The second arrives in a later millisecond than the first.
    wait_until(5, "the clock to move on", || async {
        (paynotify::time::now_ms() > first.received_at).then_some(())
    })
    .await;
    pay(&s, "T000000001", 7).await; // a duplicate
    let all = s.notifications().await;
    let second = all.last().expect("two");
    assert!(second.received_at > first.received_at);

    let ids = |v: &Value| -> Vec<i64> {
        v.as_array()
            .expect("list")
            .iter()
            .map(|n| n["id"].as_i64().expect("id"))
            .collect()
    };
    let at = |ms: i64| paynotify::time::iso_time(ms);
    let (st, since) = s
        .api(
            "GET",
            &format!("/api/admin/notifications?since={}", second.received_at),
            None,
        )
        .await;
    assert_eq!(st, 200, "{since}");
    assert_eq!(ids(&since), [second.id]);
    let (_, until) = s
        .api(
            "GET",
            &format!("/api/admin/notifications?until={}", at(second.received_at)),
            None,
        )
        .await;
    assert_eq!(ids(&until), [first.id]);
    let (_, both) = s
        .api(
            "GET",
            &format!(
                "/api/admin/notifications?since={}&until={}",
                at(first.received_at),
                second.received_at + 1
            ),
            None,
        )
        .await;
    assert_eq!(ids(&both), [second.id, first.id]);
    let (st, v) = s
        .api("GET", "/api/admin/notifications?since=last-tuesday", None)
        .await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap_or("").contains("since"), "{v}");

    let listed = ok_json(
        &cli(
            &s,
            &[
                "notifications",
                "list",
                "--json",
                "--since",
                &at(second.received_at),
            ],
        )
        .await,
        "notifications list --since",
    );
    assert_eq!(ids(&listed), [second.id]);
    assert_eq!(listed[0]["verdict"], "duplicate");
    let listed = ok_json(
        &cli(
            &s,
            &[
                "notifications",
                "list",
                "--json",
                "--until",
                &second.received_at.to_string(),
            ],
        )
        .await,
        "notifications list --until",
    );
    assert_eq!(ids(&listed), [first.id]);
    let table = ok_stdout(
        &cli(&s, &["notifications", "list", "--verdict", "paid"]).await,
        "notifications list",
    );
    assert!(
        table.starts_with("ID") && table.contains("VERDICT"),
        "{table}"
    );
    assert!(
        table.contains("T000000001") && table.contains(" paid"),
        "{table}"
    );
    let shown = ok_stdout(
        &cli(&s, &["notifications", "show", &first.id.to_string()]).await,
        "notifications show",
    );
    assert!(
        shown.contains("body:") && shown.contains("<out_trade_no>"),
        "{shown}"
    );
    let bad = cli(&s, &["notifications", "list", "--since", "soon"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}

// ---------------------------------------------------------------------------------------
// Order expiry, through the real binary

#[tokio::test]
async fn unpaid_orders_expire_and_a_late_payment_is_acknowledged_as_paid_after_close() {
    // Orders are made (and one paid) by an in-process host without the expiry job;
    // then the real binary, sharing the database, expires what is still unpaid.
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    order_of(&s, "recharge", "E000000001", "ue1", 21).await;
    order_of(&s, "recharge", "E000000002", "ue2", 22).await;
    pay(&s, "E000000002", 22).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let served = HostProcess::start(
        "expiring host",
        dir.path(),
        &s.database_url,
        &[("recharge", "recharge", None)],
        "[orders]\nexpire_after_secs = 1\nexpire_check_secs = 1\n",
    )
    .await;

    let closed = wait_until(60, "the unpaid order to be closed", || async {
        let (_, o) = served.api("GET", "/api/orders/E000000001", None).await;
        (o["status"] == -1).then_some(o)
    })
    .await;
    assert_eq!(closed["handler_status"], "pending");
    let (_, paid) = served.api("GET", "/api/orders/E000000002", None).await;
    assert_eq!(paid["status"], 1, "a paid order is never closed");

    // The user pays after all: acknowledged (the provider must stop retrying), recorded
    // as paid_after_close, and no handler runs.
    let (st, body) = served
        .try_notify(
            "/notify/wechat-v2",
            "text/xml",
            &[],
            wechat_v2::paid_xml("E000000001", 21, "42late"),
        )
        .await
        .expect("an answer");
    assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
    let (st, late) = served
        .api(
            "GET",
            "/api/admin/notifications?verdict=paid_after_close",
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(late.as_array().map(Vec::len), Some(1), "{late}");
    assert_eq!(late[0]["out_trade_no"], "E000000001");
    assert_eq!(s.order("E000000001").await.status, -1);
    assert_eq!(s.document("users", "ue1").await, None, "no handler ran");
    assert_eq!(
        s.document("users", "ue2").await,
        Some(json!({ "balance": 22 }))
    );
    let metrics = served
        .http
        .get(served.url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric(&metrics, "paynotify_orders_expired_total", &[]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "paynotify_notifications_total",
            &[("provider", "wechat-v2"), ("verdict", "paid_after_close")]
        ),
        Some(1.0)
    );
    // The CLI finds it too.
    let listed = ok_json(
        &paynotify_cli(
            &dir.path().join("paynotify.toml"),
            &[
                "notifications",
                "list",
                "--verdict",
                "paid_after_close",
                "--json",
            ],
            &[],
        )
        .await,
        "notifications list --verdict paid_after_close",
    );
    assert_eq!(listed[0]["out_trade_no"], "E000000001");
}

// ---------------------------------------------------------------------------------------
// paynotify config check

#[tokio::test]
async fn config_check_prints_the_effective_config_with_every_secret_masked() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("token.txt"), "tok-secret-1\n").expect("token file");
    std::fs::write(dir.path().join("cloud.secret"), "cloud-secret-2-0123456789").expect("secret");
    let config = dir.path().join("paynotify.toml");
    std::fs::write(
        &config,
        "[server]\napi_token_file = \"token.txt\"\n\n\
         [database]\nurl = \"postgres://pay:db-secret-3@127.0.0.1:1/pay?sslmode=disable\"\n\n\
         [[accounts]]\nprovider = \"wechat-v2\"\nappid = \"wx-visible\"\nmch_id = \"1900000109\"\n\
         api_key = \"file-secret-4\"\nnotify_key = \"notify-secret-5-0123456789abcdef\"\n\n\
         [[accounts]]\nprovider = \"cloudpay\"\nsub_mch_id = \"1900000110\"\nsecret_file = \"cloud.secret\"\n",
    )
    .expect("config");
    let env = [("PAYNOTIFY_ACCOUNTS_0_API_KEY", "env-secret-6")];
    let secrets = [
        "tok-secret-1",
        "cloud-secret-2",
        "db-secret-3",
        "file-secret-4",
        "notify-secret-5",
        "env-secret-6",
    ];
    let no_secrets = |out: &Output| {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in secrets {
            assert!(!all.contains(secret), "{secret} printed:\n{all}");
        }
    };

    let out = paynotify_cli(&config, &["config", "check"], &env).await;
    no_secrets(&out);
    let text = ok_stdout(&out, "config check");
    assert!(text.contains("valid"), "{text}");
    assert!(
        text.contains("[orders]") && text.contains("expire_after_secs = 0"),
        "{text}"
    );
    assert!(text.contains("appid = \"wx-visible\""), "{text}");
    assert!(text.contains("api_key = \"***\""), "{text}");
    assert!(
        text.contains("postgres://pay:***@127.0.0.1:1/pay"),
        "{text}"
    );

    let out = paynotify_cli(&config, &["config", "check", "--json"], &env).await;
    no_secrets(&out);
    let v = ok_json(&out, "config check --json");
    assert_eq!(v["server"]["api_token"], "***");
    assert_eq!(v["accounts"][0]["api_key"], "***");
    assert_eq!(v["accounts"][0]["notify_key"], "***");
    assert_eq!(v["accounts"][1]["secret"], "***");
    assert_eq!(v["accounts"][1]["secret_file"], "cloud.secret");
    assert_eq!(v["accounts"][0]["mch_id"], "1900000109");
    assert_eq!(
        v["database"]["url"],
        "postgres://pay:***@127.0.0.1:1/pay?sslmode=disable"
    );

    // Invalid: the error names the key and where it came from, and the exit code says so.
    /// Config text, environment, what the error must name.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 3] = [
        (
            "[orders]\nclose_batch = 0\n",
            &[],
            &["orders.close_batch", "paynotify.toml"],
        ),
        (
            "",
            &[("PAYNOTIFY_SERVER_LISTEN", "not-an-address")],
            &["PAYNOTIFY_SERVER_LISTEN"],
        ),
        (
            "[[accounts]]\nprovider = \"cloudpay\"\nsub_mch_id = \"1\"\nsecret = \"short\"\n",
            &[],
            &["accounts[0]", "secret", "paynotify.toml"],
        ),
    ];
    for (text, env, needles) in cases {
        let bad = dir.path().join("bad").join("paynotify.toml");
        std::fs::create_dir_all(bad.parent().expect("dir")).expect("dir");
        std::fs::write(&bad, text).expect("write");
        let out = paynotify_cli(&bad, &["config", "check"], env).await;
        assert!(!out.status.success(), "{text:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in needles {
            assert!(err.contains(needle), "{text:?}: `{err}` lacks `{needle}`");
        }
    }
    // A missing secret file is named with its key.
    std::fs::remove_file(dir.path().join("cloud.secret")).expect("rm");
    let out = paynotify_cli(&config, &["config", "check"], &env).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("accounts[1].secret_file") && err.contains("cloud.secret"),
        "{err}"
    );
}

/// A deploy whose `--config` names a file that is not there (a typo) must not start on
/// defaults and serve an empty database: it stops at once, names the file, and creates
/// nothing in the current folder. Without `--config` and without `paynotify.toml`, the
/// defaults are used and the log says so.
#[tokio::test]
async fn an_explicit_config_that_does_not_exist_stops_everything_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("etc").join("paynotfy.toml");
    let run = |args: Vec<std::ffi::OsString>| {
        let mut cmd = tokio::process::Command::new(paynotify_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("PAYNOTIFY_") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(dir.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    for args in [vec!["serve"], vec!["config", "check"]] {
        let mut argv: Vec<std::ffi::OsString> = vec!["--config".into(), missing.clone().into()];
        argv.extend(args.iter().map(Into::into));
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), run(argv).output())
            .await
            .expect("exits by itself")
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&missing.display().to_string()) && stderr.contains("does not exist"),
            "{args:?}: {stderr}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "created {left:?}");

    // Named through the environment: the same.
    let mut cmd = run(vec!["config".into(), "check".into()]);
    let out = cmd
        .env("PAYNOTIFY_CONFIG", &missing)
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());

    // Not named and absent: defaults, said in the log.
    let out = run(vec!["config".into(), "check".into()])
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("built-in defaults"), "{stderr}");
}
