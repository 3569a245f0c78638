//! The plugin history (issue 23 §4): every load, replacement, unload and refusal of a
//! handler build is kept in the database, across restarts, and shown by
//! `GET /api/admin/plugins/history`, `paynotify plugins history` and the console, on
//! whichever backend `PAYNOTIFY_TEST_DATABASE` selects.
//!
//! - `every_event_is_kept_across_a_restart`: the real binary (`PAYNOTIFY_BIN`) loads,
//!   replaces, refuses and unloads handlers, is killed and started again on the same
//!   database; the API (filters, paging, bad queries) and the CLI read it back.
//! - `the_store_pages_the_history_by_type_both_ways`: the store alone, reopened.
//! - `the_console_shows_each_types_history_and_check_records_nothing`: the plugins page's
//!   signer column and history link, the history page, and `plugins check`.

use paynotify::store::{Keyset, PluginEvent, PluginEventKind};
use paynotify::time::now_ms;
use paynotify_tests::process::{connect_store, ok_stdout, paynotify_cli, HostProcess};
use paynotify_tests::{
    deploy_wasm, fresh_database_url, plugin_wasm, rebuilt_plugin, sha256_hex, test_backend,
    Options, TestServer,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Helpers

/// `GET /api/admin/plugins/history{query}`: status and body.
async fn history_call(h: &HostProcess, query: &str) -> (u16, Value) {
    h.api("GET", &format!("/api/admin/plugins/history{query}"), None)
        .await
}

/// The history the API answers for `query`, newest first; panics unless 200.
async fn history(h: &HostProcess, query: &str) -> Vec<Value> {
    let (st, v) = history_call(h, query).await;
    assert_eq!(st, 200, "history{query}: {v}");
    v.as_array().expect("a list").clone()
}

/// (type, event) of each entry, oldest first.
fn events(list: &[Value]) -> Vec<(String, String)> {
    list.iter()
        .rev()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("?").to_owned(),
                e["event"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

fn pair(t: &str, e: &str) -> (String, String) {
    (t.to_owned(), e.to_owned())
}

/// What `GET /api/admin/plugins` says of `plugin_type`.
async fn status_of(h: &HostProcess, plugin_type: &str) -> Value {
    let (st, list) = h.api("GET", "/api/admin/plugins", None).await;
    assert_eq!(st, 200, "{list}");
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["type"] == plugin_type).cloned())
        .unwrap_or(Value::Null)
}

async fn reload(h: &HostProcess) -> Value {
    let (st, v) = h.api("POST", "/api/admin/plugins/reload", None).await;
    assert_eq!(st, 200, "reload: {v}");
    v
}

// ---------------------------------------------------------------------------------------
// Through the real binary, across a restart

#[tokio::test]
async fn every_event_is_kept_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database_url(dir.path());
    let mut h = HostProcess::start(
        "history",
        dir.path(),
        &url,
        &[("goods", "goods", None), ("vip", "vip", None)],
        "",
    )
    .await;
    let plugins = h.plugins_dir();
    let first_host = format!(":{}", h.pid().expect("running"));

    // Start: both types loaded, by this process, with the file's hash and version.
    let start = history(&h, "").await;
    assert_eq!(
        events(&start),
        [pair("goods", "loaded"), pair("vip", "loaded")],
        "{start:?}"
    );
    let goods_sha = sha256_hex(&std::fs::read(plugin_wasm("goods")).expect("read"));
    let serving = status_of(&h, "goods").await;
    let loaded = &start[1];
    assert_eq!(loaded["sha256"], goods_sha.as_str(), "{loaded}");
    assert_eq!(loaded["version"], serving["version"], "{loaded}");
    assert_eq!(loaded["signer"], serving["signer"], "{loaded}");
    assert_eq!(loaded["reason"], Value::Null, "{loaded}");
    let host = loaded["host"].as_str().expect("host");
    assert!(
        host.ends_with(&first_host),
        "{host} is not pid {first_host}"
    );
    assert!(loaded["at"].as_i64().expect("at") <= now_ms());

    // Another build replaces goods: `replaced`, with the new file's hash.
    let new_build = rebuilt_plugin("goods", "v2");
    let new_sha = sha256_hex(&new_build);
    deploy_wasm(&plugins, "goods", &new_build);
    reload(&h).await;
    let after = history(&h, "?type=goods").await;
    assert_eq!(after[0]["event"], "replaced", "{after:?}");
    assert_eq!(after[0]["sha256"], new_sha.as_str());

    // A broken file is refused with its reason and its hash, once: rescans of the same
    // file add nothing.
    let broken: &[u8] = b"\0asm not a component";
    deploy_wasm(&plugins, "goods", broken);
    reload(&h).await;
    reload(&h).await;
    let after = history(&h, "?type=goods").await;
    let refused: Vec<&Value> = after.iter().filter(|e| e["event"] == "refused").collect();
    assert_eq!(refused.len(), 1, "{after:?}");
    let reason = refused[0]["reason"].as_str().expect("a reason");
    assert!(reason.contains("goods.wasm"), "{reason}");
    assert_eq!(
        refused[0]["sha256"],
        sha256_hex(broken).as_str(),
        "the refused file's hash"
    );
    // The build before keeps serving.
    assert_eq!(status_of(&h, "goods").await["sha256"], new_sha.as_str());

    // Deleting the file unloads the type; the entry names the build that stopped.
    std::fs::remove_file(plugins.join("goods.wasm")).expect("rm");
    reload(&h).await;
    let before_restart = history(&h, "").await;
    assert_eq!(before_restart[0]["event"], "unloaded", "{before_restart:?}");
    assert_eq!(before_restart[0]["sha256"], new_sha.as_str());
    assert_eq!(
        events(&before_restart),
        [
            pair("goods", "loaded"),
            pair("vip", "loaded"),
            pair("goods", "replaced"),
            pair("goods", "refused"),
            pair("goods", "unloaded"),
        ]
    );

    // Killed and started again on the same database: everything is still there, and the
    // new process adds its own load of what is in the folder.
    h.restart().await;
    let second_host = format!(":{}", h.pid().expect("running"));
    let all = history(&h, "").await;
    assert_eq!(all.len(), 6, "{all:?}");
    assert_eq!(&all[1..], &before_restart[..]);
    assert_eq!(events(&all[..1]), [pair("vip", "loaded")]);
    let host = all[0]["host"].as_str().expect("host");
    assert!(
        host.ends_with(&second_host),
        "{host} is not pid {second_host}"
    );

    // By type, paged with `before`.
    let goods = history(&h, "?type=goods").await;
    assert_eq!(
        events(&goods),
        [
            pair("goods", "loaded"),
            pair("goods", "replaced"),
            pair("goods", "refused"),
            pair("goods", "unloaded"),
        ]
    );
    let vip = history(&h, "?type=vip").await;
    assert_eq!(events(&vip), [pair("vip", "loaded"), pair("vip", "loaded")]);
    let page1 = history(&h, "?type=goods&limit=2").await;
    let last = page1[1]["id"].as_i64().expect("id");
    let page2 = history(&h, &format!("?type=goods&limit=2&before={last}")).await;
    assert_eq!([page1, page2].concat(), goods);
    assert!(history(&h, "?type=nosuchtype").await.is_empty());

    // Bad queries are 400 with a JSON error, as everywhere in /api.
    for bad in [
        "?type=..%2Fgoods",
        "?type=a%20b",
        "?type=",
        "?before=soon",
        "?limit=-1",
        "?colour=red",
    ] {
        let (st, v) = history_call(&h, bad).await;
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }

    // Without a token, the history is answered as the plugins list is: 401 when the
    // server has one, served to loopback clients when it has none.
    let bare = |path: &str| h.http.get(h.url(path)).send();
    let listed = bare("/api/admin/plugins").await.expect("plugins");
    let histed = bare("/api/admin/plugins/history").await.expect("history");
    assert_eq!(histed.status(), listed.status());

    // The CLI reads the same from the database.
    let config = dir.path().join("paynotify.toml");
    let text = ok_stdout(
        &paynotify_cli(&config, &["plugins", "history", "goods"], &[]).await,
        "plugins history goods",
    );
    for word in [
        "ID", "EVENT", "SIGNER", "loaded", "replaced", "refused", "unloaded",
    ] {
        assert!(text.contains(word), "{word} missing:\n{text}");
    }
    assert!(text.contains(&new_sha[..12]), "{text}");
    assert!(!text.contains("vip"), "{text}");
    let json: Value = serde_json::from_str(
        ok_stdout(
            &paynotify_cli(
                &config,
                &["plugins", "history", "--limit", "1", "--json"],
                &[],
            )
            .await,
            "plugins history --json",
        )
        .trim(),
    )
    .expect("JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(json[0], all[0]);
    let paged = ok_stdout(
        &paynotify_cli(&config, &["plugins", "history", "vip", "--limit", "1"], &[]).await,
        "plugins history vip --limit 1",
    );
    assert!(
        paged.contains(&format!("--before {}", all[0]["id"])),
        "{paged}"
    );
    let bad = paynotify_cli(&config, &["plugins", "history", "../goods"], &[]).await;
    assert!(!bad.status.success(), "a bad type is refused");
}

// ---------------------------------------------------------------------------------------
// The store alone

fn event(plugin_type: &str, kind: PluginEventKind, reason: Option<String>) -> PluginEvent {
    PluginEvent {
        at: now_ms(),
        plugin_type: plugin_type.into(),
        event: kind,
        sha256: Some("ab".repeat(32)),
        signer: Some("ops@example.com SHA256:abc".into()),
        version: Some("1.2.3".into()),
        reason,
        host: "box:1".into(),
    }
}

#[tokio::test]
async fn the_store_pages_the_history_by_type_both_ways() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database_url(dir.path());
    let store = connect_store(&url).await;
    assert_eq!(store.backend(), test_backend());
    let h = store.plugin_history();
    let long = format!("bad\0file {}", "x".repeat(5000));
    let mut ids = Vec::new();
    for (t, k, reason) in [
        ("goods", PluginEventKind::Loaded, None),
        ("vip", PluginEventKind::Loaded, None),
        ("goods", PluginEventKind::Replaced, None),
        ("goods", PluginEventKind::Refused, Some(long.clone())),
        ("goods", PluginEventKind::Unloaded, None),
    ] {
        ids.push(
            h.record_plugin_event(&event(t, k, reason))
                .await
                .expect("record"),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    drop(store);

    // Reopened: newest first, all fields back.
    let store = connect_store(&url).await;
    let h = store.plugin_history();
    let all = h.plugin_history(None, None, 50).await.expect("read");
    let got: Vec<i64> = all.iter().map(|e| e.id).collect();
    assert_eq!(got, ids.iter().rev().copied().collect::<Vec<_>>());
    let refused = &all[1];
    assert_eq!(refused.event, PluginEventKind::Refused);
    assert_eq!(refused.version.as_deref(), Some("1.2.3"));
    assert_eq!(
        refused.signer.as_deref(),
        Some("ops@example.com SHA256:abc")
    );
    assert_eq!(refused.host, "box:1");
    let reason = refused.reason.as_deref().expect("reason");
    assert_eq!(reason.chars().count(), 2000, "the reason is capped");
    assert!(reason.starts_with("bad\u{FFFD}file x") && reason.ends_with('…'));

    // One type, paged older then newer.
    let goods = h
        .plugin_history(Some("goods"), None, 2)
        .await
        .expect("read");
    assert_eq!(
        goods.iter().map(|e| e.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    let older = h
        .plugin_history(Some("goods"), Some(ids[3]), 2)
        .await
        .expect("read");
    assert_eq!(
        older.iter().map(|e| e.id).collect::<Vec<_>>(),
        [ids[2], ids[0]]
    );
    let newer = h
        .page_plugin_history(Some("goods"), &Keyset::Newer(ids[0]), 2)
        .await
        .expect("read");
    assert_eq!(
        newer.iter().map(|e| e.id).collect::<Vec<_>>(),
        [ids[3], ids[2]]
    );
    let vip = h.plugin_history(Some("vip"), None, 0).await.expect("read");
    assert_eq!(vip.len(), 1, "a limit of 0 still reads one");
    assert_eq!(vip[0].id, ids[1]);
}

// ---------------------------------------------------------------------------------------
// The console, and `plugins check`

#[tokio::test]
async fn the_console_shows_each_types_history_and_check_records_nothing() {
    let s = TestServer::start(Options::with_plugins(&["goods"]).with_token()).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let cookie = s.console_cookie().await;
    let get = |path: &str| {
        http.get(s.url(path))
            .header("cookie", cookie.as_str())
            .send()
    };

    let page = get("/console/plugins").await.expect("plugins page");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("<th>Signer</th>"), "{html}");
    assert!(
        html.contains(r#"<td class="signer"><span class="muted">—</span></td>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"href="/console/plugins/goods/history""#),
        "{html}"
    );

    let page = get("/console/plugins/goods/history")
        .await
        .expect("history");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("History of goods"), "{html}");
    assert!(html.contains("event-loaded"), "{html}");
    let sha = sha256_hex(&std::fs::read(plugin_wasm("goods")).expect("read"));
    assert!(html.contains(&sha[..16]), "{html}");
    assert!(
        html.contains(&format!(":{}</td>", std::process::id())),
        "{html}"
    );

    let page = get("/console/plugins/vip/history").await.expect("history");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page
        .text()
        .await
        .expect("html")
        .contains("No history for vip."));
    let page = get("/console/plugins/a%20b/history")
        .await
        .expect("history");
    assert_eq!(page.status().as_u16(), 400);

    // `plugins check` loads the file the server's way, and records nothing.
    let config = s.dir.path().join("paynotify.toml");
    let wasm = plugin_wasm("vip");
    ok_stdout(
        &paynotify_cli(
            &config,
            &["plugins", "check", wasm.to_str().expect("path")],
            &[],
        )
        .await,
        "plugins check",
    );
    let all = s
        .app
        .store
        .plugin_history()
        .plugin_history(None, None, 50)
        .await
        .expect("read");
    assert_eq!(all.len(), 1, "{all:?}");
}
