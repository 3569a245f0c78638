//! The handler write audit end to end: real signed WeChat Pay v2 notifications pay and
//! refund orders on the real server, real handlers (`recharge`, `goods`, `sidefx`,
//! `fail-always`, `trap`) write, and what they wrote is read back through
//! `GET /api/admin/orders/{no}/writes`, `paynotify orders writes` and the console's order
//! page; old rows are pruned. On whichever backend `PAYNOTIFY_TEST_DATABASE` selects, with
//! or without an API token (`PAYNOTIFY_TEST_NO_TOKEN=1`).

use std::time::{Duration, Instant};

use paynotify::config::{AuditConfig, RetentionConfig};
use paynotify::retention::Retention;
use paynotify::store::audit::Pruned;
use paynotify::store::status;
use paynotify::time::now_ms;
use paynotify_tests::bulk::Db;
use paynotify_tests::process::{ok_stdout, paynotify_cli};
use paynotify_tests::{
    fresh_postgres_url, postgres_only_test_deferred, v2_return_code, wait_until, wechat_v2,
    Options, TestServer,
};
use serde_json::{json, Value};

/// The grant `sidefx` needs for its `task-write` action.
const SIDEFX_MANIFEST: &str = "collections = [\"sidefx\"]\nhttp_origins = []\n";

/// What a handler may write from an order's data: a script, were it not escaped.
const SCRIPT: &str = "<script>alert(1)</script>";

/// `GET /api/admin/orders/{no}/writes{query}`: status and body.
async fn writes_page(s: &TestServer, no: &str, query: &str) -> (u16, Value) {
    s.api(
        "GET",
        &format!("/api/admin/orders/{no}/writes{query}"),
        None,
    )
    .await
}

/// Every recorded write of an order, oldest first (one page of up to 500).
async fn writes(s: &TestServer, no: &str) -> Vec<Value> {
    let (code, v) = writes_page(s, no, "?limit=500").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["out_trade_no"], no, "{v}");
    assert_eq!(v["next_after_id"], Value::Null, "{v}");
    v["writes"].as_array().cloned().expect("writes array")
}

/// A v2 payment of `no` for `fen`, acknowledged.
async fn pay(s: &TestServer, no: &str, fen: i64, tx: &str) {
    let (_, body) = s.notify_v2(wechat_v2::paid_xml(no, fen, tx)).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    assert_eq!(s.order(no).await.status, status::PAID, "{no}");
}

/// A v2 refund notification of `refund` fen of `no`, acknowledged.
async fn refund(s: &TestServer, no: &str, refund_no: &str, total: i64, refund: i64, tx: &str) {
    let info = wechat_v2::refund_info(no, refund_no, total, refund, tx);
    let xml = wechat_v2::refund_xml(&wechat_v2::req_info(&info, wechat_v2::API_KEY));
    let (_, body) = s.notify_v2(xml).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
}

/// The fields every write of a handler call carries, as `(call, op, collection, doc_id)`.
fn what(w: &Value) -> (&str, &str, &str, &str) {
    let s = |k: &str| w[k].as_str().unwrap_or_default();
    (s("call"), s("op"), s("collection"), s("doc_id"))
}

#[tokio::test]
async fn a_recharge_payment_and_its_refund_are_recorded_write_by_write() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;

    // A first payment credits a new user: one `inc` of users/{user}, from nothing.
    s.recharge_order("AUD000001", "u-aud", 1500).await;
    pay(&s, "AUD000001", 1500, "4200A0001").await;
    let first = writes(&s, "AUD000001").await;
    assert_eq!(first.len(), 1, "{first:?}");
    let w = &first[0];
    assert_eq!(what(w), ("paid", "inc", "users", "u-aud"), "{w}");
    assert_eq!(w["before"], Value::Null, "the document did not exist: {w}");
    assert_eq!(w["after"], json!({ "balance": 1500 }), "{w}");
    let order = s.order("AUD000001").await;
    assert_eq!(w["notification_id"].as_i64(), order.paid_notification_id);
    assert_eq!(
        (&w["out_refund_no"], &w["task_id"], &w["seq"]),
        (&Value::Null, &Value::Null, &json!(0))
    );
    let build = w["build"].as_str().expect("build");
    assert!(
        build.starts_with("recharge@") && build.contains("sha256:"),
        "{build}"
    );
    assert!(w["created_at"].as_i64().expect("created_at") > now_ms() - 600_000);

    // A second order of the same user starts where the first left the document.
    s.recharge_order("AUD000002", "u-aud", 700).await;
    pay(&s, "AUD000002", 700, "4200A0002").await;
    let second = writes(&s, "AUD000002").await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(what(&second[0]), ("paid", "inc", "users", "u-aud"));
    assert_eq!(second[0]["before"], first[0]["after"]);
    assert_eq!(second[0]["after"], json!({ "balance": 2200 }));
    assert!(second[0]["id"].as_i64() > first[0]["id"].as_i64());
    // Each order lists only its own.
    assert_eq!(writes(&s, "AUD000001").await, first);

    // A refund of the first order: its handler takes 300 back, recorded as `refunded`.
    refund(&s, "AUD000001", "RF-AUD-1", 1500, 300, "4200A0001").await;
    let (code, refunds) = s.api("GET", "/api/orders/AUD000001/refunds", None).await;
    assert_eq!(code, 200, "{refunds}");
    let refund_notification = refunds["refunds"][0]["notification_id"].clone();
    let all = writes(&s, "AUD000001").await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0], first[0]);
    let r = &all[1];
    assert_eq!(what(r), ("refunded", "inc", "users", "u-aud"), "{r}");
    assert_eq!(
        (&r["out_refund_no"], &r["notification_id"]),
        (&json!("RF-AUD-1"), &refund_notification),
        "{r}"
    );
    assert_eq!(
        (&r["before"], &r["after"]),
        (&json!({ "balance": 2200 }), &json!({ "balance": 1900 }))
    );
    assert_eq!(
        s.document("users", "u-aud").await,
        Some(json!({ "balance": 1900 }))
    );

    // Paged by id: one at a time, then the end.
    let (code, p1) = writes_page(&s, "AUD000001", "?limit=1").await;
    assert_eq!(code, 200, "{p1}");
    assert_eq!(p1["writes"].as_array().map(Vec::len), Some(1));
    assert_eq!(p1["next_after_id"], all[0]["id"]);
    let (_, p2) = writes_page(
        &s,
        "AUD000001",
        &format!("?limit=1&after_id={}", all[0]["id"]),
    )
    .await;
    assert_eq!(p2["writes"][0], all[1]);
    let (_, p3) = writes_page(
        &s,
        "AUD000001",
        &format!("?limit=1&after_id={}", all[1]["id"]),
    )
    .await;
    assert_eq!(
        (p3["writes"].as_array().map(Vec::len), &p3["next_after_id"]),
        (Some(0), &Value::Null)
    );

    // Unknown order: 404; a bad query: 400 naming what is wrong. Nothing changes.
    let (code, v) = writes_page(&s, "NOSUCH0001", "").await;
    assert_eq!(code, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("NOSUCH0001"),
        "{v}"
    );
    for (query, needle) in [
        ("?limit=0", "limit"),
        ("?limit=501", "limit"),
        ("?limit=x", "limit"),
        ("?after_id=x", "after_id"),
        ("?order=1", "order"),
    ] {
        let (code, v) = writes_page(&s, "AUD000001", query).await;
        assert_eq!(code, 400, "{query}: {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(needle),
            "{query}: {v}"
        );
    }
    assert_eq!(writes(&s, "AUD000001").await, all);

    // With a token, the admin API's auth applies.
    if s.app.config.api_token().is_some() {
        let r = s
            .http
            .get(s.url("/api/admin/orders/AUD000001/writes"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 401);
        let r = s
            .http
            .get(s.url("/api/admin/orders/AUD000001/writes"))
            .bearer_auth("wrong-token")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 401);
    }
}

/// A server with `goods` and `sidefx` (granted its collection).
async fn goods_and_sidefx() -> TestServer {
    let options =
        Options::with_plugins(&["goods"]).plugin_as("sidefx", "sidefx", Some(SIDEFX_MANIFEST));
    TestServer::start(options).await
}

/// A paid order of `order_type` with `custom`.
async fn paid_order(s: &TestServer, no: &str, order_type: &str, custom: Value, tx: &str) {
    s.create_order(json!({
        "type": order_type, "total_fee": 100, "user_id": "u-t", "provider": "wechat-v2",
        "out_trade_no": no, "custom": custom,
    }))
    .await;
    pay(s, no, 100, tx).await;
}

#[tokio::test]
async fn enqueued_tasks_and_the_writes_of_task_runs_are_recorded() {
    let s = goods_and_sidefx().await;

    // goods: stock, the fulfilled order, and a send-message task, in that order.
    paid_order(
        &s,
        "AUDG00001",
        "goods",
        json!({ "goods_id": "g1", "quantity": 2 }),
        "4200G1",
    )
    .await;
    let w = writes(&s, "AUDG00001").await;
    let shape: Vec<_> = w.iter().map(what).collect();
    let task_id = s.order("AUDG00001").await.handler_result.expect("result")["message_task"]
        .as_i64()
        .expect("task id");
    assert_eq!(
        shape,
        [
            ("paid", "inc", "goods", "g1"),
            ("paid", "set", "goods_orders", "AUDG00001"),
            ("paid", "task", "send-message", task_id.to_string().as_str()),
        ],
        "{w:?}"
    );
    assert_eq!(
        w.iter().map(|x| x["seq"].as_i64()).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    assert_eq!(
        (&w[0]["before"], &w[0]["after"]),
        (&Value::Null, &json!({ "stock": -2 }))
    );
    assert_eq!(w[1]["after"]["status"], "fulfilled", "{}", w[1]);
    assert_eq!(
        w[2]["after"],
        json!({ "out_trade_no": "AUDG00001", "user_id": "u-t", "goods_id": "g1" }),
        "the task's payload"
    );
    assert_eq!(w[2]["before"], Value::Null);

    // sidefx: a document, then a task whose run changes it after the commit.
    paid_order(
        &s,
        "AUDS00001",
        "sidefx",
        json!({ "paid": "task-write", "note": "hello" }),
        "4200S1",
    )
    .await;
    let task = s.order("AUDS00001").await.handler_result.expect("result")["task_id"]
        .as_i64()
        .expect("task id");
    let w = wait_until(30, "the task run's write", || async {
        let w = writes(&s, "AUDS00001").await;
        (w.len() == 3).then_some(w)
    })
    .await;
    let shape: Vec<_> = w.iter().map(what).collect();
    assert_eq!(
        shape,
        [
            ("paid", "set", "sidefx", "AUDS00001"),
            ("paid", "task", "write", task.to_string().as_str()),
            ("task", "merge", "sidefx", "AUDS00001"),
        ],
        "{w:?}"
    );
    let run = &w[2];
    assert_eq!(run["task_id"].as_i64(), Some(task), "{run}");
    assert_eq!(
        (&run["notification_id"], &run["out_refund_no"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(run["before"], json!({ "note": "hello", "stage": "paid" }));
    assert_eq!(run["after"], json!({ "note": "hello", "stage": "task" }));
    assert!(
        run["build"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sidefx@"),
        "{run}"
    );
    assert_eq!(
        s.document("sidefx", "AUDS00001").await,
        Some(json!({ "note": "hello", "stage": "task" }))
    );
}

#[tokio::test]
async fn a_failing_or_trapping_handler_records_nothing() {
    let s = TestServer::start(Options::with_plugins(&["fail-always", "trap", "recharge"])).await;
    for (no, kind) in [("AUDF00001", "fail-always"), ("AUDT00001", "trap")] {
        s.create_order(json!({
            "type": kind, "total_fee": 100, "user_id": "u-f", "provider": "wechat-v2",
            "out_trade_no": no, "custom": {},
        }))
        .await;
        let (_, body) = s
            .notify_v2(wechat_v2::paid_xml(no, 100, &format!("4200{no}")))
            .await;
        assert_eq!(v2_return_code(&body), "FAIL", "{kind}: {body}");
        assert_eq!(s.order(no).await.status, status::UNPAID, "{kind}");
        assert_eq!(writes(&s, no).await, Vec::<Value>::new(), "{kind}");
    }
    assert_eq!(s.document("users", "u-f").await, None, "rolled back");
    // The same server records a handler that succeeds.
    s.recharge_order("AUDR00001", "u-f2", 100).await;
    pay(&s, "AUDR00001", 100, "4200R1").await;
    assert_eq!(writes(&s, "AUDR00001").await.len(), 1);
}

/// Payments sharing a batch whose first run is rolled back (a handler failed without
/// savepoints) and run again with a savepoint each: the audit holds one row per committed
/// payment, from the run that committed, and none of the failed one's.
#[tokio::test]
async fn a_batch_run_again_records_only_what_committed() {
    let s = TestServer::start(Options::with_plugins(&["recharge"]).plugin_as(
        "flaky",
        "fail-always",
        None,
    ))
    .await;
    let mut sends = Vec::new();
    for i in 0..60 {
        let no = format!("B{i:09}");
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
        sends.push(wechat_v2::paid_xml(&no, 10, &format!("TB{i}")));
    }
    let answers = futures::future::join_all(sends.into_iter().map(|x| s.notify_v2(x))).await;
    let reruns = paynotify_tests::metric(
        &s.metrics_text().await,
        "paynotify_settle_batch_reruns_total",
        &[],
    )
    .unwrap_or(0.0);
    assert!(
        reruns >= 1.0,
        "the batches were never run again: nothing tested"
    );
    let mut befores = Vec::new();
    for (i, (_, body)) in answers.iter().enumerate() {
        let no = format!("B{i:09}");
        let w = writes(&s, &no).await;
        if i % 4 == 0 {
            assert_eq!(v2_return_code(body), "FAIL", "{no}");
            assert!(w.is_empty(), "{no}: a failed payment recorded {w:?}");
            continue;
        }
        assert_eq!(v2_return_code(body), "SUCCESS", "{no}");
        assert_eq!(w.len(), 1, "{no}: {w:?}");
        assert_eq!(what(&w[0]), ("paid", "inc", "users", "good"));
        let before = w[0]["before"]["balance"].as_i64().unwrap_or(0);
        assert_eq!(w[0]["after"]["balance"], json!(before + 10), "{no}");
        befores.push(before);
    }
    // The committed increments chain: 0, 10, … 440, each once.
    befores.sort_unstable();
    assert_eq!(befores, (0..45).map(|k| k * 10).collect::<Vec<i64>>());
    assert_eq!(
        s.document("users", "good").await,
        Some(json!({ "balance": 450 }))
    );
}

#[tokio::test]
async fn with_the_audit_off_nothing_is_recorded() {
    let mut options = Options::with_plugins(&["recharge", "goods"]);
    options.extra_config = "[audit]\nenabled = false\n".into();
    let s = TestServer::start(options).await;
    s.recharge_order("AUDOFF001", "u-off", 500).await;
    pay(&s, "AUDOFF001", 500, "4200OFF1").await;
    paid_order(
        &s,
        "AUDOFF002",
        "goods",
        json!({ "goods_id": "g-off" }),
        "4200OFF2",
    )
    .await;
    assert_eq!(
        s.document("users", "u-off").await,
        Some(json!({ "balance": 500 })),
        "the handler ran"
    );
    for no in ["AUDOFF001", "AUDOFF002"] {
        assert_eq!(writes(&s, no).await, Vec::<Value>::new(), "{no}");
    }
}

/// The console's page of order `no`.
async fn order_page(s: &TestServer, cookie: &str, no: &str) -> String {
    let r = s
        .http
        .get(s.url(&format!("/console/orders/{no}")))
        .header("cookie", cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.expect("page")
}

/// The "Handler writes" section of an order's page.
fn writes_section(page: &str) -> &str {
    let start = page
        .find("id=\"handler-writes\"")
        .expect("a Handler writes section");
    let rest = &page[start..];
    let end = rest.find("Refunds started here").unwrap_or(rest.len());
    &rest[..end]
}

#[tokio::test]
async fn the_console_shows_what_changed_and_escapes_what_handlers_wrote() {
    let s = goods_and_sidefx().await;
    // The buyer's order data flows into the handlers' writes: a goods id (a document id
    // and a field) and a note.
    paid_order(
        &s,
        "AUDX00001",
        "goods",
        json!({ "goods_id": SCRIPT }),
        "4200X1",
    )
    .await;
    paid_order(
        &s,
        "AUDX00002",
        "sidefx",
        json!({ "paid": "task-write", "note": "<img src=x onerror=alert(2)>" }),
        "4200X2",
    )
    .await;
    wait_until(30, "the task run's write", || async {
        (writes(&s, "AUDX00002").await.len() == 3).then_some(())
    })
    .await;
    let cookie = s.console_cookie().await;

    let page = order_page(&s, &cookie, "AUDX00001").await;
    assert!(!page.contains(SCRIPT), "unescaped handler text on the page");
    let section = writes_section(&page);
    assert!(section.contains("Handler writes"), "{section}");
    // The stock document (its id is the script), its new field, the fulfilled order's
    // fields and the task, each escaped.
    assert!(
        section.contains("goods/&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{section}"
    );
    assert!(
        section.contains("<code>stock</code>: <span class=\"muted\">–</span> → <code>-1</code>"),
        "{section}"
    );
    assert!(
        section.contains("<code>goods_id</code>: <span class=\"muted\">–</span> → <code>&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;</code>"),
        "{section}"
    );
    assert!(section.contains("task send-message #"), "{section}");
    assert!(
        section.contains("<details>"),
        "both versions, folded: {section}"
    );
    assert!(section.contains("badge call-paid"), "{section}");

    let page = order_page(&s, &cookie, "AUDX00002").await;
    assert!(
        !page.contains("<img src=x"),
        "unescaped handler text on the page"
    );
    let section = writes_section(&page);
    assert!(
        section.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{section}"
    );
    // The task run's merge changed one field.
    assert!(
        section.contains(
            "<code>stage</code>: <code>&quot;paid&quot;</code> → <code>&quot;task&quot;</code>"
        ),
        "{section}"
    );
    assert!(section.contains("badge call-task"), "{section}");

    // An order with nothing recorded says so.
    s.create_order(json!({
        "type": "goods", "total_fee": 100, "user_id": "u-t", "provider": "wechat-v2",
        "out_trade_no": "AUDX00003", "custom": { "goods_id": "g3" },
    }))
    .await;
    let page = order_page(&s, &cookie, "AUDX00003").await;
    assert!(
        writes_section(&page).contains("No writes recorded."),
        "{page}"
    );
}

#[tokio::test]
async fn the_cli_lists_each_call_with_the_fields_it_changed() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    s.recharge_order("AUDC00001", "u-cli", 1500).await;
    pay(&s, "AUDC00001", 1500, "4200C1").await;
    refund(&s, "AUDC00001", "RF-CLI-1", 1500, 300, "4200C1").await;
    let all = writes(&s, "AUDC00001").await;
    assert_eq!(all.len(), 2, "{all:?}");
    let paid_by = s
        .order("AUDC00001")
        .await
        .paid_notification_id
        .expect("paid by");

    // The CLI asks the running server (server.listen): point a copy of its config there.
    let text = std::fs::read_to_string(s.dir.path().join("paynotify.toml")).expect("config");
    let text = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", s.addr),
    );
    let config = s.dir.path().join("cli.toml");
    std::fs::write(&config, text).expect("write config");

    let out = ok_stdout(
        &paynotify_cli(&config, &["orders", "writes", "AUDC00001"], &[]).await,
        "orders writes",
    );
    let (id0, id1) = (
        all[0]["id"].as_i64().unwrap_or(0),
        all[1]["id"].as_i64().unwrap_or(0),
    );
    for needle in [
        "handler writes of order AUDC00001:".to_owned(),
        format!("paid  notification {paid_by}  recharge@"),
        format!("  #{id0}  inc     users/u-cli\n          balance: – → 1500\n"),
        "refunded  refund RF-CLI-1  notification ".to_owned(),
        format!("  #{id1}  inc     users/u-cli\n          balance: 1500 → 1200\n"),
    ] {
        assert!(out.contains(&needle), "{needle:?} not in:\n{out}");
    }
    assert!(!out.contains("next page"), "{out}");

    // --json: the API's answer.
    let out = ok_stdout(
        &paynotify_cli(&config, &["orders", "writes", "AUDC00001", "--json"], &[]).await,
        "orders writes --json",
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["writes"], json!(all));

    // A page of one says how to get the next.
    let out = ok_stdout(
        &paynotify_cli(
            &config,
            &["orders", "writes", "AUDC00001", "--limit", "1"],
            &[],
        )
        .await,
        "orders writes --limit 1",
    );
    assert!(
        out.contains(&format!(
            "next page: paynotify orders writes AUDC00001 --after {id0} --limit 1"
        )),
        "{out}"
    );

    // An unknown order: an error naming it, exit status 1.
    let out = paynotify_cli(&config, &["orders", "writes", "NOSUCH0001"], &[]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("404") && err.contains("no order `NOSUCH0001`"),
        "{err}"
    );
}

/// Inserts `n` recorded writes of order `no` created at `at`, straight into the database.
async fn insert_writes(db: &mut Db, no: &str, n: usize, at: i64) {
    for i in 0..n {
        db.execute(&format!(
            "INSERT INTO handler_writes (out_trade_no, call_kind, build, seq, op, collection, \
             doc_id, before, after, created_at) VALUES ('{no}', 'paid', 'recharge@0.1.0 sha256:00', \
             {i}, 'inc', 'users', 'u-old', NULL, '{{\"balance\":{i}}}', {at})"
        ))
        .await;
    }
}

/// Inserts `n` recorded shadow differences created at `at`.
async fn insert_differences(db: &mut Db, n: usize, at: i64) {
    for _ in 0..n {
        db.execute(&format!(
            "INSERT INTO shadow_differences (plugin_type, candidate_sha256, candidate_build, \
             serving_build, out_trade_no, call_kind, result, diff, created_at) VALUES \
             ('recharge', 'ab', 'recharge@0.2.0 sha256:ab', 'recharge@0.1.0 sha256:00', \
             'AUDOLD001', 'paid', 'different', '{{}}', {at})"
        ))
        .await;
    }
}

#[tokio::test]
async fn old_audit_rows_are_pruned_in_chunks_and_recent_ones_kept() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    s.recharge_order("AUDP00001", "u-p", 100).await;
    pay(&s, "AUDP00001", 100, "4200P1").await;
    let recent = writes(&s, "AUDP00001").await;
    assert_eq!(recent.len(), 1);

    let mut db = Db::connect(&s.database_url).await;
    s.recharge_order("AUDOLD001", "u-old", 100).await;
    let long_ago = 1_000;
    insert_writes(&mut db, "AUDOLD001", 5, long_ago).await;
    insert_differences(&mut db, 3, long_ago).await;
    insert_differences(&mut db, 1, now_ms()).await;
    let count = |table: &str| format!("SELECT COUNT(*) FROM {table}");
    assert_eq!(writes(&s, "AUDOLD001").await.len(), 5);

    // Chunks of two: each call deletes at most two rows of each table, oldest first.
    let audit = s.app.store.audit();
    let cut = now_ms() - 86_400_000;
    let mut chunks = Vec::new();
    loop {
        let p = audit.prune(cut, 2).await.expect("prune");
        chunks.push((p.writes, p.differences));
        if !p.full(2) {
            break;
        }
    }
    assert_eq!(chunks, [(2, 2), (2, 1), (1, 0)]);
    assert_eq!(writes(&s, "AUDOLD001").await, Vec::<Value>::new());
    assert_eq!(
        writes(&s, "AUDP00001").await,
        recent,
        "recent writes are kept"
    );
    assert_eq!(
        db.number(&count("shadow_differences")).await,
        1,
        "the recent one is kept"
    );
    assert_eq!(audit.prune(cut, 2).await.expect("prune"), Pruned::default());

    // The job, as every host runs it: two at once delete each old row exactly once.
    insert_writes(&mut db, "AUDOLD001", 7, long_ago).await;
    insert_differences(&mut db, 3, long_ago).await;
    let job = |keep_days| {
        Retention::new(s.app.store.clone(), RetentionConfig::default()).with_audit(AuditConfig {
            enabled: true,
            keep_days,
        })
    };
    let (a, b) = (job(1), job(1));
    let (pa, pb) = tokio::join!(a.prune_audit(), b.prune_audit());
    let (pa, pb) = (pa.expect("prune"), pb.expect("prune"));
    assert_eq!(
        (pa.writes + pb.writes, pa.differences + pb.differences),
        (7, 3),
        "{pa:?} {pb:?}"
    );
    assert_eq!(
        writes(&s, "AUDP00001").await,
        recent,
        "younger than keep_days"
    );
    assert_eq!(db.number(&count("handler_writes")).await, 1);

    // The job as `serve` starts it (`[audit] keep_days` = 90 here) prunes at once, leaving
    // the recent write and the recent difference.
    insert_writes(&mut db, "AUDOLD001", 3, long_ago).await;
    insert_differences(&mut db, 2, long_ago).await;
    let started = paynotify::retention::start(&s.app);
    wait_until(30, "the started job to prune the old rows", || async {
        let mut db = Db::connect(&s.database_url).await;
        let left = db.number(&count("handler_writes")).await
            + db.number(&count("shadow_differences")).await;
        (left == 2).then_some(())
    })
    .await;
    started.abort();
    assert_eq!(writes(&s, "AUDP00001").await, recent);

    // A cut-off after everything: the rest goes.
    let all = job(90)
        .prune_audit_before(now_ms() + 60_000)
        .await
        .expect("prune");
    assert_eq!(
        all,
        Pruned {
            writes: 1,
            differences: 1
        }
    );
    assert_eq!(db.number(&count("handler_writes")).await, 0);
    assert_eq!(db.number(&count("shadow_differences")).await, 0);
    assert_eq!(
        s.order("AUDP00001").await.status,
        status::PAID,
        "orders are never pruned"
    );
}

#[tokio::test]
async fn a_writes_read_on_a_stuck_database_is_a_503_not_a_hang() {
    const TEST: &str = "a_writes_read_on_a_stuck_database_is_a_503_not_a_hang";
    // A read that waits on a lock: PostgreSQL (SQLite's readers never wait for a writer).
    if postgres_only_test_deferred(TEST) {
        return;
    }
    let s = TestServer::start(
        Options::with_plugins(&["recharge"]).database_url(Some(fresh_postgres_url())),
    )
    .await;
    s.recharge_order("AUDL00001", "u-l", 100).await;
    pay(&s, "AUDL00001", 100, "4200L1").await;
    let mut db = Db::connect(&s.database_url).await;
    db.execute("BEGIN").await;
    db.execute("LOCK TABLE handler_writes IN ACCESS EXCLUSIVE MODE")
        .await;
    let started = Instant::now();
    let (code, v) = tokio::time::timeout(Duration::from_secs(60), writes_page(&s, "AUDL00001", ""))
        .await
        .expect("an answer, not a hang");
    let took = started.elapsed();
    assert_eq!(code, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("database"),
        "{v}"
    );
    // `[database] timeout_secs` (5 s by default), plus a busy machine's slack.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    db.execute("ROLLBACK").await;
    assert_eq!(writes(&s, "AUDL00001").await.len(), 1);
}
