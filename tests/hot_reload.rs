//! Hot reload under load: handlers are replaced, broken, removed and put back while the
//! server runs and the watcher picks the changes up.

use paynotify_tests::{
    deploy_wasm, install_plugin, plugin_wasm, rebuilt_plugin, v2_return_code, wait_until,
    wechat_v2, Options, TestServer,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

async fn plugin_status(s: &TestServer, plugin_type: &str) -> Value {
    let (_, list) = s.api("GET", "/api/admin/plugins", None).await;
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["type"] == plugin_type).cloned())
        .unwrap_or(Value::Null)
}

async fn serving_sha(s: &TestServer, plugin_type: &str) -> Option<String> {
    plugin_status(s, plugin_type).await["sha256"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test]
async fn replacing_a_handler_under_load_drops_nothing_and_runs_each_payment_once() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let _watch = s.app.watch_plugins().expect("watch");
    let old_sha = serving_sha(&s, "recharge").await.expect("loaded");
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Four clients pay orders back to back until told to stop.
    let lane = || async {
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let no = format!("H{i:09}");
            s.recharge_order(&no, &format!("u{}", i % 7), 10 + i as i64)
                .await;
            let (st, body) = s
                .notify_v2(wechat_v2::paid_xml(&no, 10 + i as i64, &format!("T{i:09}")))
                .await;
            answers.push((i, st, body));
        }
        answers
    };
    let conductor = async {
        wait_until(30, "50 payments on the old build", || async {
            (next.load(Ordering::Relaxed) >= 50).then_some(())
        })
        .await;
        deploy_wasm(
            &s.plugins_dir(),
            "recharge",
            &rebuilt_plugin("recharge", "v2"),
        );
        let new_sha = wait_until(10, "the new version to serve", || async {
            serving_sha(&s, "recharge")
                .await
                .filter(|sha| *sha != old_sha)
        })
        .await;
        let swapped_at = next.load(Ordering::Relaxed);
        wait_until(30, "50 payments after the swap", || async {
            (next.load(Ordering::Relaxed) >= swapped_at + 50).then_some(())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        new_sha
    };
    let (new_sha, a, b, c, d) = tokio::join!(conductor, lane(), lane(), lane(), lane());
    let answers: Vec<_> = [a, b, c, d].into_iter().flatten().collect();
    let n = answers.len();
    for (i, st, body) in &answers {
        assert_eq!(
            (*st, v2_return_code(body)),
            (200, "SUCCESS"),
            "notification {i}: {body}"
        );
    }
    // Every order paid once, by exactly one of the two builds; balances exact.
    let (mut by_old, mut by_new) = (0, 0);
    let mut expected = [0i64; 7];
    for (i, _, _) in &answers {
        let o = s.order(&format!("H{i:09}")).await;
        assert_eq!(o.status, 1);
        let build = o.handler_version.unwrap_or_default();
        if build.contains(&old_sha[..12]) {
            by_old += 1;
        } else if build.contains(&new_sha[..12]) {
            by_new += 1;
        } else {
            panic!("order {i} handled by unknown build {build}");
        }
        expected[i % 7] += 10 + *i as i64;
    }
    for (u, want) in expected.iter().enumerate() {
        let doc = s.document("users", &format!("u{u}")).await.expect("user");
        assert_eq!(doc["balance"], json!(want), "user u{u}");
    }
    assert!(by_old >= 50 && by_new > 0, "old {by_old}, new {by_new}");
    assert_eq!(
        s.notifications().await.len(),
        n,
        "every notification stored"
    );
    println!(
        "swap under load: {n} payments, {by_old} on the old build, {by_new} on the new, 0 failed"
    );
}

#[tokio::test]
async fn corrupt_half_written_and_wrong_version_files_leave_the_old_version_serving() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let _watch = s.app.watch_plugins().expect("watch");
    let old_sha = serving_sha(&s, "recharge").await.expect("loaded");
    let dir = s.plugins_dir();
    let good = std::fs::read(plugin_wasm("recharge")).expect("read");
    let wrong_world = std::fs::read(plugin_wasm("wrong-world")).expect("read");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "corrupt",
            b"\0asm this is not a component".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "half-written",
            good[..good.len() / 2].to_vec(),
            "not a valid WebAssembly component",
        ),
        ("wrong world version", wrong_world, "0.2.0"),
    ];
    let mut last_error_at = 0;
    for (i, (name, bytes, needle)) in cases.into_iter().enumerate() {
        // Written in place, not renamed: the watcher sees the file while it is written.
        std::fs::write(dir.join("recharge.wasm"), &bytes).expect("write in place");
        let status = wait_until(10, &format!("{name}: the load error to show"), || async {
            let st = plugin_status(&s, "recharge").await;
            let fresh = st["last_error_at"].as_i64().unwrap_or(0) > last_error_at;
            st["last_error"]
                .as_str()
                .filter(|e| fresh && e.contains(needle))
                .map(|_| st.clone())
        })
        .await;
        last_error_at = status["last_error_at"].as_i64().unwrap_or(0);
        assert_eq!(status["loaded"], true, "{name}");
        assert_eq!(
            status["sha256"].as_str(),
            Some(old_sha.as_str()),
            "{name}: old version serving"
        );
        // And it really serves.
        let no = format!("C{i:09}");
        s.recharge_order(&no, "uc", 5).await;
        let (_, body) = s
            .notify_v2(wechat_v2::paid_xml(&no, 5, &format!("TC{i}")))
            .await;
        assert_eq!(v2_return_code(&body), "SUCCESS", "{name}");
    }
    let wrong = plugin_status(&s, "recharge").await["last_error"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        wrong.contains("@0.1.0"),
        "names the version it needs: {wrong}"
    );
    // Putting the good file back clears the error.
    deploy_wasm(&dir, "recharge", &rebuilt_plugin("recharge", "fixed"));
    wait_until(10, "the error to clear", || async {
        let st = plugin_status(&s, "recharge").await;
        (st["last_error"].is_null() && st["sha256"] != json!(old_sha)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn deleting_a_handler_unloads_its_type_until_it_is_put_back() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let _watch = s.app.watch_plugins().expect("watch");
    s.recharge_order("D000000001", "ud", 77).await;
    std::fs::remove_file(s.plugins_dir().join("recharge.wasm")).expect("rm");
    wait_until(10, "recharge to unload", || async {
        plugin_status(&s, "recharge").await.is_null().then_some(())
    })
    .await;
    // New orders of the type are refused with a clear error.
    let (st, v) = s
        .api("POST", "/api/orders", Some(json!({ "type": "recharge", "total_fee": 1, "user_id": "u", "provider": "wechat-v2" })))
        .await;
    assert_eq!(st, 422);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("no loaded handler"),
        "{v}"
    );
    // A payment for an existing order is stored and answered FAIL so WeChat retries.
    let xml = wechat_v2::paid_xml("D000000001", 77, "TD1");
    let (_, body) = s.notify_v2(xml.clone()).await;
    assert_eq!(v2_return_code(&body), "FAIL");
    assert_eq!(s.order("D000000001").await.status, 0);
    // Put it back: the provider's retry completes the payment.
    install_plugin(&s.plugins_dir(), "recharge", "recharge", None);
    wait_until(10, "recharge to load again", || async {
        (plugin_status(&s, "recharge").await["loaded"] == true).then_some(())
    })
    .await;
    let (_, body) = s.notify_v2(xml).await;
    assert_eq!(v2_return_code(&body), "SUCCESS");
    assert_eq!(
        s.document("users", "ud").await,
        Some(json!({ "balance": 77 }))
    );
}

#[tokio::test]
async fn a_restart_reuses_the_compiled_cache() {
    let cache = tempfile::tempdir().expect("tmp");
    let mut options = Options::with_plugins(&["recharge"]);
    options.plugins_cache_dir = Some(cache.path().join("compiled"));
    let s = TestServer::start(options).await;
    let entries: Vec<_> = std::fs::read_dir(cache.path().join("compiled"))
        .expect("cache dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "one compiled artefact");
    let sha = serving_sha(&s, "recharge").await.expect("loaded");
    let name = entries[0].file_name().to_string_lossy().into_owned();
    assert!(name.starts_with(&sha), "{name} is keyed by the file hash");
    // A rewrite goes through a temporary file and a rename: a new inode. (A load from the
    // cache touches the file's mtime, marking it in use, so the mtime cannot tell.)
    let written = {
        use std::os::unix::fs::MetadataExt;
        entries[0].metadata().expect("metadata").ino()
    };
    // A second host on the same directory loads from the cache: the artefact is not rewritten.
    let config =
        paynotify::Config::load(&s.dir.path().join("paynotify.toml"), Vec::new()).expect("config");
    let again = paynotify::App::start(config).await.expect("second start");
    assert!(again.plugins.get("recharge").is_some());
    let after = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(entries[0].path())
            .expect("metadata")
            .ino()
    };
    assert_eq!(written, after, "compiled artefact reused, not recompiled");
    // A rescan of the unchanged directory recompiles nothing.
    let report = s.reload_plugins().await;
    assert_eq!(report["report"]["unchanged"], json!(["recharge"]));
    assert!(report["report"]["loaded"]
        .as_array()
        .is_some_and(|l| l.is_empty()));
}

/// A large component (the JavaScript recharge) takes seconds to compile: meanwhile ops and
/// API clients are told it is loading, not that the type does not exist; a file that
/// failed to load is named with its error.
#[tokio::test]
async fn a_handler_being_compiled_shows_as_loading_and_a_failed_one_says_why() {
    let cache = tempfile::tempdir().expect("tmp");
    let mut options = Options::with_plugins(&[]);
    // A cache of its own, empty: the component is compiled, not loaded from an artefact.
    options.plugins_cache_dir = Some(cache.path().join("compiled"));
    let s = TestServer::start(options).await;
    let dir = s.plugins_dir();
    install_plugin(&dir, "recharge", "recharge-js", None);
    std::fs::copy(
        paynotify_tests::plugin_manifest("recharge-js").expect("manifest"),
        dir.join("recharge.toml"),
    )
    .expect("manifest");
    std::fs::write(dir.join("vip.wasm"), b"\0asm\x01\0\0\0 cut short").expect("write");
    let registry = s.app.plugins.clone();
    let scan = tokio::spawn(async move { registry.rescan().await });
    let order = |order_type: &str| json!({ "type": order_type, "total_fee": 100, "user_id": "u1", "provider": "wechat-v2" });

    let since = wait_until(60, "recharge to show as loading", || async {
        plugin_status(&s, "recharge").await["loading_since"].as_i64()
    })
    .await;
    assert!(since > 0);
    let (status, body) = s.api("POST", "/api/orders", Some(order("recharge"))).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("is loading (compiling for"),
        "the client learns it is loading: {body}"
    );

    let report = scan.await.expect("scan");
    assert!(report.loaded.contains(&"recharge".to_owned()), "{report:?}");
    let st = plugin_status(&s, "recharge").await;
    assert_eq!(
        (st["loaded"].clone(), st["loading_since"].clone()),
        (json!(true), Value::Null),
        "{st}"
    );

    let (status, body) = s.api("POST", "/api/orders", Some(order("vip"))).await;
    assert_eq!(status, 422, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("has no loaded handler") && text.contains("vip.wasm"),
        "the client learns the file failed, and which: {body}"
    );
}
