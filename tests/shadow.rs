//! Shadow runs: a candidate staged as `{type}.next.wasm` runs beside the serving build on
//! every payment and refund, and its outcome and writes are compared, never applied.

use paynotify_tests::{
    install_plugin, rebuilt_plugin, v2_return_code, wait_until, wechat_v2, Options, TestServer,
};
use serde_json::{json, Value};

/// Stages built plugin `name` as the candidate of `recharge` (with `manifest`, else the
/// plugin's own), and waits until the server has loaded it.
async fn stage(s: &TestServer, name: &str, manifest: Option<&str>) -> String {
    install_plugin(&s.plugins_dir(), "recharge.next", name, manifest);
    s.reload_plugins().await;
    wait_until(20, "the candidate to load", || async {
        report(s).await["candidate"].as_str().map(str::to_owned)
    })
    .await
}

/// Stages `bytes` as the candidate of `recharge`, with recharge's own manifest.
async fn stage_bytes(s: &TestServer, bytes: &[u8]) -> String {
    let dir = s.plugins_dir();
    std::fs::copy(dir.join("recharge.toml"), dir.join("recharge.next.toml")).expect("toml");
    std::fs::write(dir.join(".next.part"), bytes).expect("write");
    std::fs::rename(dir.join(".next.part"), dir.join("recharge.next.wasm")).expect("rename");
    s.reload_plugins().await;
    wait_until(20, "the candidate to load", || async {
        report(s).await["candidate"].as_str().map(str::to_owned)
    })
    .await
}

async fn report(s: &TestServer) -> Value {
    let (status, v) = s
        .api("GET", "/api/admin/plugins/recharge/shadow", None)
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The report's entry for the candidate build `build`, once it counted `runs` runs.
async fn build_report(s: &TestServer, build: &str, runs: i64) -> Value {
    wait_until(20, &format!("{runs} shadow runs of {build}"), || async {
        let r = report(s).await;
        r["builds"]
            .as_array()?
            .iter()
            .find(|b| b["candidate_build"] == build && b["runs"].as_i64() == Some(runs))
            .cloned()
    })
    .await
}

async fn pay(s: &TestServer, no: &str, user: &str, fen: i64) {
    s.recharge_order(no, user, fen).await;
    let (status, body) = s
        .notify_v2(wechat_v2::paid_xml(no, fen, &format!("T{no}")))
        .await;
    assert_eq!((status, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
    assert_eq!(s.order(no).await.status, 1, "{no} paid");
}

async fn balance(s: &TestServer, user: &str) -> Value {
    s.document("users", user).await.expect("user")["balance"].clone()
}

/// A manifest for a test candidate that is not a recharge build: recharge's grants, and
/// a short limit so that a looping one ends quickly.
const CANDIDATE_TOML: &str = "collections = [\"users\"]\ntimeout_ms = 300\n";

#[tokio::test]
async fn a_candidate_that_credits_double_differs_on_every_payment_and_changes_no_balance() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let candidate = stage(&s, "recharge-double", None).await;
    assert!(candidate.starts_with("recharge@"), "{candidate}");
    for (i, fen) in [100, 250, 40].into_iter().enumerate() {
        pay(&s, &format!("SD{i:07}"), "u1", fen).await;
    }
    pay(&s, "SD0000009", "u2", 70).await;
    // The serving build's credits, and only those.
    assert_eq!(balance(&s, "u1").await, json!(390));
    assert_eq!(balance(&s, "u2").await, json!(70));

    let b = build_report(&s, &candidate, 4).await;
    assert_eq!(
        (&b["same"], &b["different"], &b["failed"], &b["staged"]),
        (&json!(0), &json!(4), &json!(0), &json!(true)),
        "{b}"
    );
    let diffs = b["differences"].as_array().expect("differences");
    assert_eq!(diffs.len(), 4, "{b}");
    // Each run saw the balance as the serving build saw it (not as the candidate would
    // have left it): before 0, 100, 350 for u1.
    for (d, (no, before, fen)) in diffs.iter().zip([
        ("SD0000000", 0, 100),
        ("SD0000001", 100, 250),
        ("SD0000002", 350, 40),
        ("SD0000009", 0, 70),
    ]) {
        assert_eq!(d["out_trade_no"], no, "{d}");
        assert_eq!(
            (&d["result"], &d["call"]),
            (&json!("different"), &json!("paid"))
        );
        let w = &d["diff"]["writes"][0];
        assert_eq!(w["collection"], "users");
        let before_doc = if before == 0 {
            json!(null)
        } else {
            json!({"balance": before})
        };
        assert_eq!(w["before"], before_doc, "{d}");
        assert_eq!(w["serving"], json!({"balance": before + fen}), "{d}");
        assert_eq!(w["candidate"], json!({"balance": before + 2 * fen}), "{d}");
        assert_eq!(
            d["diff"]["outcome"],
            json!({"serving": {"balance": before + fen}, "candidate": {"balance": before + 2 * fen}}),
            "{d}"
        );
    }
    let metrics = s.metrics_text().await;
    assert_eq!(
        paynotify_tests::metric(
            &metrics,
            "paynotify_shadow_runs_total",
            &[("plugin", "recharge"), ("result", "different")]
        ),
        Some(4.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_identical_candidate_is_the_same_on_payments_and_refunds() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    // The same code in another file: another build.
    let candidate = stage_bytes(&s, &rebuilt_plugin("recharge", "same")).await;
    for i in 0..5 {
        pay(&s, &format!("SS{i:07}"), &format!("u{}", i % 2), 100 + i).await;
    }
    let b = build_report(&s, &candidate, 5).await;
    assert_eq!(
        (&b["same"], &b["different"], &b["failed"]),
        (&json!(5), &json!(0), &json!(0)),
        "{b}"
    );
    assert_eq!(b["differences"], json!([]));

    // A refund runs the candidate's refund handler beside the serving one.
    let info = wechat_v2::refund_info("SS0000000", "RF1", 100, 40, "TSS0000000");
    let xml = wechat_v2::refund_xml(&wechat_v2::req_info(&info, wechat_v2::API_KEY));
    let (_, body) = s.notify_v2(xml).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    let b = build_report(&s, &candidate, 6).await;
    assert_eq!((&b["same"], &b["failed"]), (&json!(6), &json!(0)), "{b}");
}

#[tokio::test]
async fn trapping_and_looping_candidates_are_failed_runs_while_every_payment_succeeds() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let trap = stage(&s, "trap", Some(CANDIDATE_TOML)).await;
    for i in 0..3 {
        pay(&s, &format!("ST{i:07}"), "u1", 10).await;
    }
    let b = build_report(&s, &trap, 3).await;
    assert_eq!(
        (&b["failed"], &b["same"], &b["different"]),
        (&json!(3), &json!(0), &json!(0)),
        "{b}"
    );
    let first = &b["differences"][0];
    assert_eq!(first["result"], "failed");
    assert!(
        first["diff"]["candidate"]["error"].as_str().is_some(),
        "{first}"
    );
    assert_eq!(first["diff"]["serving"]["outcome"], json!({"balance": 10}));

    let looping = stage(&s, "loop", Some(CANDIDATE_TOML)).await;
    assert_ne!(looping, trap);
    for i in 3..6 {
        pay(&s, &format!("ST{i:07}"), "u1", 10).await;
    }
    let b = build_report(&s, &looping, 3).await;
    assert_eq!(b["failed"], json!(3), "{b}");
    assert_eq!(
        balance(&s, "u1").await,
        json!(60),
        "every payment credited once"
    );
    // The trapping build's counts stay beside it.
    let r = report(&s).await;
    assert_eq!(r["builds"].as_array().map(Vec::len), Some(2), "{r}");
}

#[tokio::test]
async fn without_a_candidate_or_with_sample_zero_nothing_is_shadowed() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    pay(&s, "SN0000001", "u1", 10).await;
    let r = report(&s).await;
    assert_eq!(
        (&r["candidate"], &r["builds"]),
        (&json!(null), &json!([])),
        "{r}"
    );

    let mut options = Options::with_plugins(&["recharge"]);
    options.plugins_config = "shadow_sample = 0.0\n".into();
    let s = TestServer::start(options).await;
    stage(&s, "recharge-double", None).await;
    pay(&s, "SN0000002", "u1", 10).await;
    // Give a (wrongly) queued run time to land before looking.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = report(&s).await;
    assert_eq!(
        (r["sample"].as_f64(), &r["builds"]),
        (Some(0.0), &json!([])),
        "{r}"
    );
    assert_eq!(balance(&s, "u1").await, json!(10));
}

#[tokio::test]
async fn the_report_refuses_a_type_that_cannot_be_a_plugin_name() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let (status, v) = s
        .api("GET", "/api/admin/plugins/re.charge/shadow", None)
        .await;
    assert_eq!(status, 400, "{v}");
}

/// Stages `bytes` (with `manifest`) as the candidate of `plugin_type`, waits until loaded.
async fn stage_as(s: &TestServer, plugin_type: &str, bytes: &[u8], manifest: &str) -> String {
    let dir = s.plugins_dir();
    std::fs::write(dir.join(format!("{plugin_type}.next.toml")), manifest).expect("toml");
    std::fs::write(dir.join(".next.part"), bytes).expect("write");
    std::fs::rename(
        dir.join(".next.part"),
        dir.join(format!("{plugin_type}.next.wasm")),
    )
    .expect("rename");
    s.reload_plugins().await;
    let path = format!("/api/admin/plugins/{plugin_type}/shadow");
    wait_until(20, "the candidate to load", || async {
        let (_, r) = s.api("GET", &path, None).await;
        r["candidate"].as_str().map(str::to_owned)
    })
    .await
}

/// A paid `goods` order whose `goods_id` is `goods_id`.
async fn pay_goods(s: &TestServer, no: &str, goods_id: &str) {
    s.create_order(json!({
        "type": "goods", "total_fee": 100, "user_id": "u-g", "provider": "wechat-v2",
        "out_trade_no": no, "custom": { "goods_id": goods_id, "quantity": 1 },
    }))
    .await;
    let (_, body) = s
        .notify_v2(wechat_v2::paid_xml(no, 100, &format!("T{no}")))
        .await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
}

const GOODS_TOML: &str = "collections = [\"goods\", \"goods_orders\"]\ntimeout_ms = 300\n";

#[tokio::test]
async fn an_identical_candidate_that_enqueues_tasks_and_sets_documents_is_the_same() {
    let s = TestServer::start(Options::with_plugins(&["goods"])).await;
    // goods decrements stock, sets the order document and enqueues a task whose id is in
    // its outcome: the same only if the candidate sees the same state and gets the same
    // task id.
    let candidate = stage_as(&s, "goods", &rebuilt_plugin("goods", "same"), GOODS_TOML).await;
    for i in 0..3 {
        pay_goods(&s, &format!("SG{i:07}"), "sku-1").await;
    }
    let path = "/api/admin/plugins/goods/shadow";
    let b = wait_until(20, "3 shadow runs", || async {
        let (_, r) = s.api("GET", path, None).await;
        r["builds"]
            .as_array()?
            .iter()
            .find(|b| b["candidate_build"] == candidate.as_str() && b["runs"] == 3)
            .cloned()
    })
    .await;
    assert_eq!(
        (&b["same"], &b["different"], &b["failed"]),
        (&json!(3), &json!(0), &json!(0)),
        "{b}"
    );
    // Only the serving build's tasks exist: one per order.
    assert_eq!(
        s.app.store.list_tasks(None, 10).await.expect("tasks").len(),
        3
    );
    assert_eq!(
        s.document("goods", "sku-1").await,
        Some(json!({"stock": -3}))
    );
}

#[tokio::test]
async fn the_console_shows_a_failed_run_with_what_the_handler_wrote_escaped() {
    let s = TestServer::start(Options::with_plugins(&["goods"])).await;
    let trap = stage_as(
        &s,
        "goods",
        &std::fs::read(paynotify_tests::plugin_wasm("trap")).expect("trap"),
        GOODS_TOML,
    )
    .await;
    pay_goods(&s, "SC0000001", "<script>alert(1)</script>").await;
    let path = "/api/admin/plugins/goods/shadow";
    wait_until(20, "the failed run", || async {
        let (_, r) = s.api("GET", path, None).await;
        (r["builds"][0]["failed"] == 1).then_some(())
    })
    .await;
    let cookie = s.console_cookie().await;
    let (status, page) = s
        .console_page(&cookie, "/console/plugins/goods/shadow")
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&trap), "the candidate build is named");
    assert!(page.contains("SC0000001"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        !page.contains("<script>alert(1)</script>"),
        "unescaped: {page}"
    );
    let (_, list) = s.console_page(&cookie, "/console/plugins").await;
    assert!(
        list.contains("/console/plugins/goods/shadow"),
        "linked from the plugins page"
    );
    let (status, _) = s
        .console_page(&cookie, "/console/plugins/go.ods/shadow")
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn two_hosts_on_one_database_add_up_their_shadow_runs() {
    let a = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let b = TestServer::start(
        Options::with_plugins(&["recharge"]).database_url(Some(a.database_url.clone())),
    )
    .await;
    let candidate = stage(&a, "recharge-double", None).await;
    assert_eq!(stage(&b, "recharge-double", None).await, candidate);
    pay(&a, "SH0000001", "u1", 10).await;
    pay(&b, "SH0000002", "u1", 20).await;
    pay(&a, "SH0000003", "u2", 30).await;
    // Each host writes its own counts; either host's report shows the sum.
    let from_b = wait_until(20, "both hosts' runs in b's report", || async {
        let (_, r) = b
            .api("GET", "/api/admin/plugins/recharge/shadow", None)
            .await;
        let build = r["builds"].as_array()?.first()?.clone();
        (build["runs"] == 3).then_some(build)
    })
    .await;
    assert_eq!(
        (&from_b["different"], &from_b["same"]),
        (&json!(3), &json!(0)),
        "{from_b}"
    );
    let orders: Vec<&str> = from_b["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .filter_map(|d| d["out_trade_no"].as_str())
        .collect();
    assert_eq!(orders.len(), 3, "{from_b}");
    assert_eq!(balance(&a, "u1").await, json!(30));
}
