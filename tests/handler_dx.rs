//! Handler developer experience: projects made by `paynotify new-plugin` (Rust and
//! JavaScript) build as they are and pay an order end to end; the JavaScript twin of
//! `recharge` leaves exactly the database state the Rust one does; `paynotify try` shows
//! a handler's writes, tasks and logs; `paynotify plugins check` says what is wrong with a
//! file. Measurements (size, load, per call) are printed with `--nocapture`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Instant;

use paynotify::plugins::bindings;
use paynotify::plugins::capabilities::{CallContext, CallTags, DbAccess};
use paynotify::plugins::{Manifest, Runtime};
use paynotify_tests::process::paynotify_bin;
use paynotify_tests::{
    fresh_database_url, plugin_manifest, plugin_wasm, v2_return_code, wait_until, wechat_v2,
    Options, TestServer,
};
use serde_json::{json, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Runs `cmd`, panicking with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The compiled-plugin cache every server and command of these tests shares: the JS
/// component is large (its first compile takes a while), the cache is keyed by the file's
/// hash and the engine's configuration.
fn compiled_cache() -> PathBuf {
    target_dir().join("handler-dx-cache")
}

/// The real binary, run in `dir` (so nothing defaulting to ./plugins.d lands in the
/// checkout) with a configuration that only sets the shared compiled cache.
fn paynotify(dir: &Path) -> Command {
    let config = dir.join("paynotify-dx.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\ncache_dir = \"{}\"\n",
            compiled_cache().display()
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(paynotify_bin());
    cmd.current_dir(dir)
        .arg("--config")
        .arg(config)
        .env_remove("PAYNOTIFY_CONFIG");
    cmd
}

/// Test server options with the shared compiled cache.
fn cached(mut options: Options) -> Options {
    options.plugins_cache_dir = Some(compiled_cache());
    options
}

/// Pays order `no` of `order_type` on `s` with a WeChat v2 notification; the body answered.
async fn pay(s: &TestServer, no: &str, fen: i64) -> String {
    let (status, body) = s
        .notify_v2(wechat_v2::paid_xml(no, fen, &format!("T{no}")))
        .await;
    assert_eq!(status, 200, "{no}: {body}");
    body
}

/// Installs `wasm` + `manifest` as handler `plugin_type` of `s` and waits for it to load.
async fn install(s: &TestServer, plugin_type: &str, wasm: &Path, manifest: &Path) {
    let dir = s.plugins_dir();
    std::fs::copy(manifest, dir.join(format!("{plugin_type}.toml"))).expect("copy manifest");
    std::fs::copy(wasm, dir.join(format!(".{plugin_type}.tmp"))).expect("copy wasm");
    std::fs::rename(
        dir.join(format!(".{plugin_type}.tmp")),
        dir.join(format!("{plugin_type}.wasm")),
    )
    .expect("rename wasm");
    // Scanned directly rather than through the admin API: a first compile of a JS
    // component can take longer than an HTTP request may.
    let report = s.app.plugins.scan().await;
    assert_eq!(report.loaded, [plugin_type], "{report:?}");
}

/// Pays an order of a scaffolded handler's type and checks the template's writes, task
/// and its run.
async fn scaffolded_handler_pays_an_order(plugin_type: &str, wasm: &Path, manifest: &Path) {
    let s = TestServer::start(cached(Options::with_plugins(&[]))).await;
    install(&s, plugin_type, wasm, manifest).await;
    s.create_order(json!({
        "type": plugin_type, "total_fee": 990, "user_id": "u1", "provider": "wechat-v2",
        "out_trade_no": "S000000001", "custom": { "points": 10 }
    }))
    .await;
    let body = pay(&s, "S000000001", 990).await;
    assert_eq!(v2_return_code(&body), "SUCCESS", "{body}");
    let order = s.order("S000000001").await;
    assert_eq!(order.handler_status, "succeeded", "{order:?}");
    assert_eq!(order.handler_result, Some(json!({ "points": 10 })));
    assert_eq!(
        s.document("users", "u1").await,
        Some(json!({ "points": 10 }))
    );
    assert_eq!(
        s.document(&format!("{plugin_type}_orders"), "S000000001")
            .await,
        Some(json!({ "user_id": "u1", "total_fee": 990, "transaction_id": "TS000000001" }))
    );
    let task = wait_until(30, "the notify-user task to run", || async {
        let tasks = s.app.store.list_tasks(None, 10).await.expect("tasks");
        tasks.into_iter().find(|t| t.status == "done")
    })
    .await;
    assert_eq!(task.name, "notify-user");
    assert_eq!(
        serde_json::from_str::<Value>(&task.payload).expect("payload"),
        json!({ "user_id": "u1", "out_trade_no": "S000000001" })
    );
}

#[tokio::test]
async fn new_plugin_rust_project_builds_outside_the_repository_and_pays_an_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let project = tmp.path().join("points");
    let out = run_ok(
        paynotify(tmp.path())
            .args(["new-plugin", "points", "--lang", "rust", "--dir"])
            .arg(&project),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("cargo build --release --target wasm32-wasip2")
            && said.contains("--order order.json")
            && said.contains("cargo install --path host --locked"),
        "{said}"
    );
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "points.toml",
        "order.json",
        "README.md",
        "wit/plugin.wit",
    ] {
        assert!(project.join(f).is_file(), "{f} written");
    }

    // Built from the temp dir on its own (a shared target dir only keeps reruns quick).
    let started = Instant::now();
    run_ok(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&project)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .env("CARGO_TARGET_DIR", target_dir().join("scaffold"))
            .env("CARGO_NET_OFFLINE", "true")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_MANIFEST_DIR"),
    );
    println!(
        "scaffolded Rust project built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let wasm = target_dir().join("scaffold/wasm32-wasip2/release/points.wasm");

    // The "next:" steps as printed, in the project, where the build would be without the
    // shared target dir: `try` finds points.toml and pays the scaffolded order.json.
    let release = project.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::copy(&wasm, release.join("points.wasm")).expect("copy wasm");
    let out = run_ok(paynotify(&project).args([
        "try",
        "target/wasm32-wasip2/release/points.wasm",
        "--order",
        "order.json",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "manifest: {}",
            project.join("points.toml").display()
        )) && text.contains("handle-paid: ok")
            && text.contains(r#"users/u1  {"points":10}"#),
        "{text}"
    );

    scaffolded_handler_pays_an_order("points", &wasm, &project.join("points.toml")).await;

    // Again: the directory exists, so nothing is overwritten.
    std::fs::write(project.join("src/lib.rs"), "// mine").expect("edit");
    let again = paynotify(tmp.path())
        .args(["new-plugin", "points", "--dir"])
        .arg(&project)
        .output()
        .expect("run");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(project.join("src/lib.rs")).expect("read"),
        "// mine"
    );
}

#[tokio::test]
async fn new_plugin_js_project_builds_outside_the_repository_and_pays_an_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let project = tmp.path().join("points-js");
    run_ok(
        paynotify(tmp.path())
            .args(["new-plugin", "points-js", "--lang", "js", "--dir"])
            .arg(&project),
    );
    for f in [
        "package.json",
        "build.mjs",
        "src/points-js.js",
        "src/paynotify.js",
        "points-js.toml",
        "wit/plugin.wit",
    ] {
        assert!(project.join(f).is_file(), "{f} written");
    }
    let started = Instant::now();
    run_ok(Command::new("npm").current_dir(&project).args([
        "install",
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
    ]));
    run_ok(
        Command::new("npm")
            .current_dir(&project)
            .args(["run", "build"]),
    );
    println!(
        "scaffolded JS project installed and built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let wasm = project.join("dist/points-js.wasm");
    scaffolded_handler_pays_an_order("points-js", &wasm, &project.join("points-js.toml")).await;
}

#[test]
fn new_plugin_refuses_bad_names() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (name, why) in [
        ("9lives", "start with a letter"),
        ("../escape", "letters, digits, - and _"),
        ("has space", "letters, digits, - and _"),
        ("fn", "keyword"),
    ] {
        let out = paynotify(tmp.path())
            .args(["new-plugin", name, "--dir"])
            .arg(tmp.path().join("p"))
            .output()
            .expect("run");
        assert!(!out.status.success(), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is not a valid handler name") && err.contains(why),
            "{name}: {err}"
        );
        assert!(!tmp.path().join("p").exists(), "{name}: nothing written");
    }
}

/// Everything about an order the handler decides, for comparing two runs: the order
/// without its times and `handler_version`; a failure by its code (the message says which
/// language failed).
fn order_state(o: &paynotify::store::Order) -> Value {
    let mut v = serde_json::to_value(o).expect("order json");
    let m = v.as_object_mut().expect("object");
    for k in ["handler_version", "created_at", "updated_at", "notify_date"] {
        m.remove(k);
    }
    if o.handler_status == "failed" {
        let code = o.handler_result.as_ref().map(|r| r["error"].clone());
        m.insert("handler_result".into(), json!({ "error": code }));
    }
    v
}

/// Every document of `users` and every task, in a comparable form.
async fn db_state(s: &TestServer) -> (Vec<(String, Value)>, Vec<Value>) {
    let mut tx = s.app.store.begin().await.expect("begin");
    let docs = tx
        .doc_query("users", &[], 1000)
        .await
        .expect("query")
        .into_iter()
        .map(|(id, data)| (id, serde_json::from_str(&data).expect("json")))
        .collect();
    drop(tx);
    let tasks = s
        .app
        .store
        .list_tasks(None, 100)
        .await
        .expect("tasks")
        .into_iter()
        .map(|t| json!([t.plugin, t.name, t.payload, t.out_trade_no, t.status]))
        .collect();
    (docs, tasks)
}

#[tokio::test]
async fn js_recharge_twin_leaves_the_same_database_state_as_the_rust_recharge() {
    let rust = TestServer::start(cached(Options::with_plugins(&["recharge"]))).await;
    let js = TestServer::start(cached(Options::with_plugins(&[]).plugin_as(
        "recharge",
        "recharge-js",
        None,
    )))
    .await;
    let (_, list) = js.api("GET", "/api/admin/plugins", None).await;
    assert!(
        list.to_string().contains("\"loaded\":true"),
        "JS twin loaded: {list}"
    );

    // (order, user, total_fee, custom, answer expected)
    let orders = [
        (
            "J000000001",
            "u1",
            500,
            json!({ "recharge_balance": 500 }),
            "SUCCESS",
        ),
        (
            "J000000002",
            "u1",
            300,
            json!({ "recharge_balance": 300 }),
            "SUCCESS",
        ),
        (
            "J000000003",
            "u2",
            1,
            json!({ "recharge_balance": 0 }),
            "SUCCESS",
        ),
        (
            "J000000004",
            "u3",
            100,
            json!({ "recharge_balance": -5 }),
            "FAIL",
        ),
        (
            "J000000005",
            "u3",
            100,
            json!({ "recharge_balance": "100" }),
            "FAIL",
        ),
        (
            "J000000006",
            "u3",
            100,
            json!({ "recharge_balance": 1.5 }),
            "FAIL",
        ),
        ("J000000007", "u3", 100, json!({}), "FAIL"),
        (
            "J000000008",
            "u3",
            100,
            json!({ "recharge_balance": null }),
            "FAIL",
        ),
        (
            "J000000009",
            "u4",
            2500,
            json!({ "recharge_balance": 2500, "note": "extra fields are fine" }),
            "SUCCESS",
        ),
    ];
    for s in [&rust, &js] {
        for (no, user, fee, custom, _) in &orders {
            s.create_order(json!({
                "type": "recharge", "total_fee": fee, "user_id": user, "provider": "wechat-v2",
                "out_trade_no": no, "custom": custom
            }))
            .await;
        }
    }
    // The same notifications, byte for byte, to both; the first one twice (a duplicate).
    let mut xmls: Vec<(String, &str)> = orders
        .iter()
        .map(|(no, _, fee, _, want)| (wechat_v2::paid_xml(no, *fee, &format!("T{no}")), *want))
        .collect();
    xmls.insert(1, xmls[0].clone());
    for (xml, want) in &xmls {
        let (_, a) = rust.notify_v2(xml.clone()).await;
        let (_, b) = js.notify_v2(xml.clone()).await;
        assert_eq!(v2_return_code(&a), *want, "rust: {xml}");
        assert_eq!(v2_return_code(&b), *want, "js: {xml}");
    }
    for (no, ..) in &orders {
        let (a, b) = (rust.order(no).await, js.order(no).await);
        assert_eq!(order_state(&a), order_state(&b), "order {no}");
        assert_ne!(
            a.handler_version, b.handler_version,
            "two different builds ran"
        );
    }
    let (rust_docs, rust_tasks) = db_state(&rust).await;
    let (js_docs, js_tasks) = db_state(&js).await;
    assert_eq!(
        rust_docs,
        vec![
            ("u1".to_string(), json!({ "balance": 800 })),
            ("u2".to_string(), json!({ "balance": 0 })),
            ("u4".to_string(), json!({ "balance": 2500 })),
        ]
    );
    assert_eq!(js_docs, rust_docs);
    assert_eq!(js_tasks, rust_tasks);
    assert_eq!(
        js.order("J000000004").await.handler_result.expect("result")["error"],
        "invalid-custom"
    );
}

/// Size, load time (cold compile, warm from the compiled cache) and time per
/// `handle-paid` (instantiate + call + the `inc`, in a transaction rolled back after
/// each) of the JS twin beside the Rust recharge. Printed, never asserted on.
#[tokio::test]
async fn measure_js_and_rust_recharge() {
    let cfg = paynotify::config::PluginsConfig::default();
    let runtime = Runtime::new(&cfg).expect("runtime");
    let tmp = tempfile::tempdir().expect("tmp");
    let store = paynotify::store::connect(&paynotify::config::DatabaseConfig {
        url: fresh_database_url(tmp.path()),
        ..Default::default()
    })
    .await
    .expect("store");
    println!("| handler | size | load cold | load warm (cache) | handle-paid median | p90 |");
    println!("|---|---|---|---|---|---|");
    for (name, manifest_of) in [("recharge", "recharge"), ("recharge-js", "recharge-js")] {
        let bytes = std::fs::read(plugin_wasm(name)).expect("wasm");
        let size = bytes.len();
        let manifest = Arc::new(
            Manifest::load(&plugin_manifest(manifest_of).expect("manifest")).expect("manifest"),
        );
        let limits = manifest.limits(&cfg).expect("limits");
        let cache = paynotify::plugins::Cache::open(&tmp.path().join(format!("cache-{name}")))
            .expect("cache");
        let sha = format!("{name}-measure");
        let t = Instant::now();
        runtime
            .compile(
                "recharge",
                bytes.clone(),
                &sha,
                Some(&cache),
                &manifest,
                limits,
            )
            .await
            .expect("cold compile");
        let cold = t.elapsed();
        let t = Instant::now();
        let compiled = runtime
            .compile("recharge", bytes, &sha, Some(&cache), &manifest, limits)
            .await
            .expect("warm load");
        let warm = t.elapsed();
        let mut times = Vec::new();
        for i in 0..40 {
            let tx = store.begin().await.expect("begin");
            let ctx = CallContext {
                manifest: manifest.clone(),
                tags: CallTags {
                    plugin: "recharge".into(),
                    version: compiled.metadata.version.clone(),
                    out_trade_no: Some(format!("M{i}")),
                    notification_id: Some(i),
                    task_id: None,
                },
                db: DbAccess::Tx(tx),
                notify_key: None,
                provider: Some("wechat-v2".into()),
                account: Some("default".into()),
                http: runtime.http_client(),
                poisoned: None,
                record: None,
                audit_each: None,
            };
            let order = bindings::Order {
                out_trade_no: format!("M{i}"),
                type_: "recharge".into(),
                provider: "wechat-v2".into(),
                account: "default".into(),
                total_fee: 100,
                user_id: "m1".into(),
                custom: r#"{"recharge_balance":100}"#.into(),
                transaction_id: format!("TM{i}"),
            };
            let notification = bindings::Notification {
                id: i,
                provider: "wechat-v2".into(),
                account: "default".into(),
                out_trade_no: format!("M{i}"),
                transaction_id: format!("TM{i}"),
                amount: 100,
                paid_at: None,
                fields: Vec::new(),
            };
            let t = Instant::now();
            let (ctx, result) = runtime
                .handle_paid(&compiled, ctx, limits, order, notification)
                .await;
            times.push(t.elapsed());
            assert_eq!(
                result.expect("handle-paid"),
                json!({ "balance": 100 }),
                "{name}"
            );
            drop(ctx);
        }
        times.sort();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {name} | {:.1} KiB | {:.0} ms | {:.1} ms | {:.2} ms | {:.2} ms |",
            size as f64 / 1024.0,
            ms(cold),
            ms(warm),
            ms(times[times.len() / 2]),
            ms(times[times.len() * 9 / 10]),
        );
    }
}

#[test]
fn try_shows_the_writes_tasks_and_logs_of_a_handler() {
    let tmp = tempfile::tempdir().expect("tmp");
    let order = tmp.path().join("order.json");
    std::fs::write(
        &order,
        r#"{"out_trade_no": "TRY1", "user_id": "u1", "total_fee": 500, "custom": {"recharge_balance": 500}}"#,
    )
    .expect("write");
    for (name, manifest) in [("recharge", "recharge"), ("recharge-js", "recharge-js")] {
        let manifest = plugin_manifest(manifest).expect("manifest");
        let out = run_ok(
            paynotify(tmp.path())
                .arg("try")
                .arg(plugin_wasm(name))
                .arg("--order")
                .arg(&order)
                .arg("--manifest")
                .arg(&manifest),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("handle-paid: ok"), "{name}: {text}");
        assert!(
            text.contains(r#"users/u1  {"balance":500}"#),
            "{name}: {text}"
        );
        assert!(
            text.contains("INFO  credited 500 fen to user u1; balance now 500"),
            "{name}: {text}"
        );
        assert!(text.contains("tasks queued:\n  (none)"), "{name}: {text}");

        let out = run_ok(
            paynotify(tmp.path())
                .args(["--json", "try"])
                .arg(plugin_wasm(name))
                .arg("--order")
                .arg(&order)
                .arg("--manifest")
                .arg(&manifest),
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["result"], json!({ "balance": 500 }));
        assert_eq!(
            report["documents"],
            json!({ "users": { "u1": { "balance": 500 } } })
        );
        assert_eq!(report["tasks"], json!([]));
        assert_eq!(report["logs"][0]["level"], "info");
        assert_eq!(
            report["logs"][0]["message"],
            "credited 500 fen to user u1; balance now 500"
        );
    }

    // A handler that queues a task: goods (stock decremented, a message queued).
    let goods_order = tmp.path().join("goods.json");
    std::fs::write(
        &goods_order,
        r#"{"out_trade_no": "G1", "user_id": "u9", "total_fee": 300, "custom": {"goods_id": "g1", "quantity": 1}}"#,
    )
    .expect("write");
    let out = paynotify(tmp.path())
        .args(["--json", "try"])
        .arg(plugin_wasm("goods"))
        .arg("--order")
        .arg(&goods_order)
        .arg("--manifest")
        .arg(plugin_manifest("goods").expect("manifest"))
        .output()
        .expect("run");
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["tasks"][0]["name"], "send-message", "{report}");
    assert!(
        report["documents"]["goods_orders"]["G1"].is_object(),
        "{report}"
    );
    assert_eq!(
        report["documents"]["goods"]["g1"],
        json!({ "stock": -1 }),
        "{report}"
    );
    // No stock: the warning and its fields are in the report.
    let warn = report["logs"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["level"] == "warn"))
        .unwrap_or_else(|| panic!("a warning: {report}"));
    assert!(
        warn["fields"]
            .as_str()
            .unwrap_or("")
            .contains("goods_id=g1"),
        "{report}"
    );

    // A failing call: exit code 1, the error, and the rollback said.
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"user_id": "u1", "total_fee": 1, "custom": {"recharge_balance": -1}}"#,
    )
    .expect("write");
    let out = paynotify(tmp.path())
        .arg("try")
        .arg(plugin_wasm("recharge-js"))
        .arg("--order")
        .arg(&bad)
        .arg("--manifest")
        .arg(plugin_manifest("recharge-js").expect("manifest"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("handle-paid: FAILED"), "{text}");
    assert!(
        text.contains("[invalid-custom]") && text.contains("must not be negative"),
        "{text}"
    );
    assert!(text.contains("rolled back"), "{text}");

    // Bad input is an error before anything runs.
    std::fs::write(&bad, r#"{"user_id": "u1"}"#).expect("write");
    let out = paynotify(tmp.path())
        .arg("try")
        .arg(plugin_wasm("recharge"))
        .arg("--order")
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("total_fee"),
        "{err}"
    );
}

/// `try` and `plugins check` without `--manifest`, on a build output inside a project, use
/// the project's `{type}.toml` and say so; `--manifest` names another, whose grants and
/// limits `check` prints.
#[test]
fn try_and_check_find_the_manifest_in_the_project() {
    let tmp = tempfile::tempdir().expect("tmp");
    let project = tmp.path().join("shop");
    let release = project.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"recharge\"\n",
    )
    .expect("write");
    std::fs::copy(
        plugin_manifest("recharge").expect("manifest"),
        project.join("recharge.toml"),
    )
    .expect("copy manifest");
    std::fs::copy(plugin_wasm("recharge"), release.join("recharge.wasm")).expect("copy wasm");
    std::fs::write(
        project.join("order.json"),
        r#"{"user_id": "u1", "total_fee": 500, "custom": {"recharge_balance": 500}}"#,
    )
    .expect("write");
    let wasm = "target/wasm32-wasip2/release/recharge.wasm";
    let used = format!("manifest: {}", project.join("recharge.toml").display());

    let out = run_ok(paynotify(&project).args(["try", wasm, "--order", "order.json"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&used)
            && text.contains("handle-paid: ok")
            && text.contains(r#"users/u1  {"balance":500}"#),
        "{text}"
    );

    let out = run_ok(paynotify(&project).args(["plugins", "check", wasm]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&used)
            && text.contains("collections: users\n")
            && text.contains("limits: timeout 4000 ms, payment timeout ")
            && text.contains("memory 64 MiB"),
        "{text}"
    );

    // Named: its grants and limits, as text and JSON.
    let other = tmp.path().join("other.toml");
    std::fs::write(
        &other,
        "collections = [\"wallets\"]\ntimeout_ms = 1500\npayment_timeout_ms = 100\nmemory_mb = 32\n",
    )
    .expect("write");
    let out = run_ok(
        paynotify(&project)
            .args(["plugins", "check", wasm, "--manifest"])
            .arg(&other),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("manifest: {}", other.display()))
            && text.contains("collections: wallets\n")
            && text.contains("limits: timeout 1500 ms, payment timeout 100 ms, memory 32 MiB"),
        "{text}"
    );
    let out = run_ok(
        paynotify(&project)
            .args(["--json", "plugins", "check", wasm, "--manifest"])
            .arg(&other),
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (&v["timeout_ms"], &v["payment_timeout_ms"], &v["memory_mb"]),
        (&json!(1500), &json!(100), &json!(32)),
        "{v}"
    );
    assert_eq!(v["manifest"], json!(other.display().to_string()), "{v}");

    // A named manifest that is not there is an error, for both.
    for command in [
        &["plugins", "check", wasm][..],
        &["try", wasm, "--order", "order.json"],
    ] {
        let out = paynotify(&project)
            .args(command)
            .args(["--manifest", "missing.toml"])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("missing.toml"),
            "{command:?}: {err}"
        );
    }
}

/// `plugins check` in a folder without a configuration file writes nothing into it (the
/// compiled component, 37 MB for the JS one, goes to the user's cache folder), and says
/// what it compiles while the first compile takes seconds.
#[test]
fn check_without_a_config_caches_outside_the_folder_and_says_it_compiles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let here = tmp.path().join("here");
    let cache_home = tmp.path().join("cache-home");
    std::fs::create_dir_all(&here).expect("mkdir");
    let out = run_ok(
        Command::new(paynotify_bin())
            .current_dir(&here)
            .env_remove("PAYNOTIFY_CONFIG")
            .env("XDG_CACHE_HOME", &cache_home)
            .args(["plugins", "check"])
            .arg(plugin_wasm("recharge-js")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok, recharge"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("compiling recharge-js.wasm (first time, ~"),
        "{err}"
    );
    // It opens no database and watches no folder: the defaults' are nothing to warn of.
    assert!(!err.contains("built-in defaults"), "{err}");
    let written: Vec<_> = std::fs::read_dir(&here)
        .expect("read")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        written.is_empty(),
        "written into the current folder: {written:?}"
    );
    let cached = std::fs::read_dir(cache_home.join("paynotify/compiled"))
        .expect("the user cache")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .count();
    assert_eq!(cached, 1);
}

/// `plugins check FILE`: its non-zero exit and stderr message.
fn check(dir: &Path, file: &Path) -> String {
    let out = paynotify(dir)
        .args(["plugins", "check"])
        .arg(file)
        .output()
        .expect("run");
    assert!(!out.status.success(), "{} passed the check", file.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn plugins_check_explains_what_is_wrong() {
    let tmp = tempfile::tempdir().expect("tmp");
    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };

    let out = run_ok(
        paynotify(tmp.path())
            .args(["plugins", "check"])
            .arg(plugin_wasm("recharge-js")),
    );
    let ok = String::from_utf8_lossy(&out.stdout);
    assert!(
        ok.contains("ok, recharge 0.1.0 (paynotify:plugin@0.1.0)"),
        "{ok}"
    );

    let e = check(tmp.path(), &write("text.wasm", b"console.log('hi')\n"));
    assert!(e.contains("not a WebAssembly file"), "{e}");

    let core = wat::parse_str(r#"(module (func (export "handle-paid")))"#).expect("wat");
    let e = check(tmp.path(), &write("core.wasm", &core));
    assert!(
        e.contains("core WebAssembly module, not a component"),
        "{e}"
    );

    let e = check(tmp.path(), &plugin_wasm("wrong-world"));
    assert!(
        e.contains("built for paynotify:plugin@0.2.0, this host implements @0.1.0"),
        "{e}"
    );

    let no_exports = wat::parse_str(
        r#"(component
             (core module $m (func (export "f") (result i32) i32.const 0))
             (core instance $i (instantiate $m))
             (func $f (result u32) (canon lift (core func $i "f")))
             (export "metadata" (func $f)))"#,
    )
    .expect("wat");
    let e = check(tmp.path(), &write("partial.wasm", &no_exports));
    assert!(e.contains("missing exports handle-paid, run-task"), "{e}");

    let http =
        wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#)
            .expect("wat");
    let e = check(tmp.path(), &write("http.wasm", &http));
    assert!(
        e.contains("`wasi:http/outgoing-handler@0.2.0` is not granted")
            && e.contains("paynotify:plugin/http"),
        "{e}"
    );

    let unknown = wat::parse_str(r#"(component (import "evil:net/raw" (func)))"#).expect("wat");
    let e = check(tmp.path(), &write("unknown.wasm", &unknown));
    assert!(
        e.contains("`evil:net/raw` is not provided by this host"),
        "{e}"
    );
}

/// `plugins check` of a handler whose manifest opts in to HTTP inside the payment and to the
/// notify key says so, with the warning (text), and lists both grants (`--json`).
#[test]
fn plugins_check_shows_the_side_effect_opt_ins() {
    let tmp = tempfile::tempdir().expect("tmp");
    let wasm = tmp.path().join("sidefx.wasm");
    std::fs::copy(plugin_wasm("sidefx"), &wasm).expect("copy");
    std::fs::write(
        tmp.path().join("sidefx.toml"),
        "http_origins = [\"https://backend.example\"]\nhttp_in_payment = true\ncrypto = true\n",
    )
    .expect("write manifest");
    let out = run_ok(paynotify(tmp.path()).args(["plugins", "check"]).arg(&wasm));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("http in payment: yes (http_in_payment = true)")
            && text.contains("crypto (notify key): yes")
            && text.contains("warning: http_in_payment = true")
            && text.contains("may run more than once")
            && text.contains("hold the payment's locks"),
        "{text}"
    );
    let out = run_ok(
        paynotify(tmp.path())
            .args(["--json", "plugins", "check"])
            .arg(&wasm),
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (&v["http_in_payment"], &v["crypto"]),
        (&json!(true), &json!(true)),
        "{v}"
    );

    // Without the opt-ins the check says they are off.
    std::fs::write(
        tmp.path().join("sidefx.toml"),
        "http_origins = [\"https://backend.example\"]\n",
    )
    .expect("write manifest");
    let out = run_ok(paynotify(tmp.path()).args(["plugins", "check"]).arg(&wasm));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("http in payment: no (run-task only)")
            && text.contains("crypto (notify key): no")
            && !text.contains("warning"),
        "{text}"
    );
}

/// The JS SDK's capabilities end to end, through `try` on a handler built from a fresh
/// `new-plugin --lang js` project: vk-style `update` with `_.inc`, `get`, `where`, `add`,
/// `remove`, `crypto` keyed by the notify key, `config`, `tasks` with a delay, a denied HTTP
/// origin and a denied collection as thrown `HandlerError`s, the notification's fields; and
/// `crypto` refused as `crypto-denied` once the manifest no longer grants it.
#[test]
fn js_sdk_capabilities_work_from_a_handler() {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    let tmp = tempfile::tempdir().expect("tmp");
    let project = tmp.path().join("sdkcheck");
    run_ok(
        paynotify(tmp.path())
            .args(["new-plugin", "sdkcheck", "--lang", "js", "--dir"])
            .arg(&project),
    );
    std::fs::write(
        project.join("src/sdkcheck.js"),
        r#"import { db, _, log, tasks, http, crypto, config, toHex } from './paynotify.js';

export async function handlePaid(order, notification) {
  const users = db.collection('users');
  const res = await users.doc(order.user_id).update({ balance: _.inc(order.total_fee), name: 'vk' });
  const got = users.doc(order.user_id).get();
  const found = users.where({ name: 'vk' }).limit(5).get().map((d) => d._id);
  const other = users.add({ name: 'other' });
  const removed = users.doc(other).remove();
  const absent = users.doc('nobody').get();
  let denied = null;
  try { http.request({ url: 'https://example.com/' }); } catch (e) { denied = e.code; }
  let notGranted = null;
  try { db.collection('secrets').doc('x').get(); } catch (e) { notGranted = e.code; }
  const taskId = tasks.enqueue('later', { n: 1 }, 60);
  const sig = crypto.sign('abc');
  log.warn('checked', { sig_len: sig.length });
  return {
    updated: res.updated, got, found, removed, absent, denied, notGranted, taskId, sig,
    roundTrip: crypto.aesDecryptText(crypto.aesEncrypt('secret')),
    sha: toHex(crypto.sha256('abc')),
    greeting: config.get('greeting'), missing: config.get('missing') ?? null,
    fields: notification.fields, paidAt: notification.paid_at, amount: notification.amount,
  };
}
"#,
    )
    .expect("write handler");
    std::fs::write(
        project.join("sdkcheck.toml"),
        "collections = [\"users\"]\nhttp_origins = []\ncrypto = true\n\n[config]\ngreeting = \"hello\"\n",
    )
    .expect("write manifest");
    run_ok(Command::new("npm").current_dir(&project).args([
        "install",
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
    ]));
    run_ok(
        Command::new("npm")
            .current_dir(&project)
            .args(["run", "build"]),
    );

    std::fs::write(
        tmp.path().join("order.json"),
        r#"{"user_id": "u1", "total_fee": 250, "custom": {}}"#,
    )
    .expect("write");
    std::fs::write(
        tmp.path().join("notification.json"),
        r#"{"amount": 250, "paid_at": "2026-09-03T13:15:40Z", "fields": {"bank_type": "CMB"}}"#,
    )
    .expect("write");
    let key = "0123456789abcdef".repeat(4);
    let out = run_ok(
        paynotify(tmp.path())
            .args(["--json", "try"])
            .arg(project.join("dist/sdkcheck.wasm"))
            .args([
                "--order",
                "order.json",
                "--notification",
                "notification.json",
            ])
            .arg("--manifest")
            .arg(project.join("sdkcheck.toml"))
            .args(["--notify-key", &key]),
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["ok"], true, "{report}");
    let r = &report["result"];
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&hex::decode(&key).expect("hex")).expect("key");
    mac.update(b"abc");
    assert_eq!(r["sig"], hex::encode(mac.finalize().into_bytes()), "{r}");
    assert_eq!(r["sha"], hex::encode(Sha256::digest(b"abc")));
    assert_eq!(r["roundTrip"], "secret");
    assert_eq!(r["updated"], 1);
    assert_eq!(r["got"], json!({ "balance": 250, "name": "vk" }));
    assert_eq!(r["found"], json!(["u1"]));
    assert_eq!((&r["removed"], &r["absent"]), (&json!(true), &Value::Null));
    assert_eq!(
        (&r["denied"], &r["notGranted"]),
        (&json!("http-denied"), &json!("db-denied"))
    );
    assert_eq!(
        (&r["greeting"], &r["missing"]),
        (&json!("hello"), &Value::Null)
    );
    assert_eq!(r["fields"], json!({ "bank_type": "CMB" }));
    assert_eq!(
        (&r["paidAt"], &r["amount"]),
        (&json!("2026-09-03T13:15:40Z"), &json!(250))
    );
    assert_eq!(
        report["documents"],
        json!({ "users": { "u1": { "balance": 250, "name": "vk" } } })
    );
    assert_eq!(report["tasks"][0]["name"], "later", "{report}");
    assert_eq!(report["tasks"][0]["payload"], json!({ "n": 1 }));
    assert_eq!(report["tasks"][0]["id"], r["taskId"]);
    assert!(
        report["tasks"][0]["delay_secs"].as_i64().unwrap_or(0) > 50,
        "{report}"
    );
    assert_eq!(report["logs"][0]["level"], "warn", "{report}");
    assert_eq!(report["logs"][0]["fields"], "sig_len=64");

    // The same handler without `crypto = true`: its first keyed call throws crypto-denied.
    std::fs::write(
        project.join("sdkcheck.toml"),
        "collections = [\"users\"]\nhttp_origins = []\n\n[config]\ngreeting = \"hello\"\n",
    )
    .expect("write manifest");
    let out = paynotify(tmp.path())
        .args(["--json", "try"])
        .arg(project.join("dist/sdkcheck.wasm"))
        .args(["--order", "order.json"])
        .arg("--manifest")
        .arg(project.join("sdkcheck.toml"))
        .args(["--notify-key", &key])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["ok"], false, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("crypto-denied") && text.contains("set `crypto = true` in"),
        "{report}"
    );
}
