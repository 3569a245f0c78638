//! Staged candidates (`{type}.next.wasm`), promote and rollback against the real server:
//! recharge orders paid by real signed WeChat v2 notifications, the real `recharge` build
//! serving and the real `recharge-double` (it credits twice) staged as its candidate.
//!
//! - `a_staged_candidate_is_shown_never_serves_and_a_broken_one_harms_nothing`: status,
//!   history, a broken and a removed candidate, a candidate of a type nothing serves.
//! - `promote_and_rollbacks_under_load_pay_every_order_exactly_once`: four clients paying
//!   while the candidate is promoted, rolled back and rolled back again; every order paid
//!   once by one of the two builds, balances exact, the files as documented, the next scan
//!   reloads nothing.
//! - `rollback_returns_and_returns_again_and_refusals_change_nothing`: rollback, a second
//!   one, a staged candidate left alone, and every 409 leaving the folder as it was.
//! - `signed_candidates_and_previous_builds_are_checked_like_serving_builds`: with
//!   `allowed_signers`, unsigned, foreign-signed and other-type candidates are refused, a
//!   signed one promotes with its signatures, an edited `.prev` is refused by a rollback.
//! - `the_cli_promotes_and_rolls_back_through_the_running_server`.
//! - `the_console_buttons_promote_and_roll_back_and_refuse_forged_posts`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use paynotify_tests::process::{ok_stdout, paynotify_cli};
use paynotify_tests::signing::{key, sign, Key};
use paynotify_tests::staging::{built_files, folder_files, stage_candidate};
use paynotify_tests::{
    plugin_manifest, plugin_wasm, v2_return_code, wait_until, wechat_v2, Options, TestServer,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Helpers

/// `GET /api/admin/plugins`' entry for `plugin_type` (`null` when it is not listed).
async fn plugin_status(s: &TestServer, plugin_type: &str) -> Value {
    let (st, list) = s.api("GET", "/api/admin/plugins", None).await;
    assert_eq!(st, 200, "{list}");
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["type"] == plugin_type).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until `plugin_type`'s status satisfies `check`, and returns it.
async fn status_when(
    s: &TestServer,
    plugin_type: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_until(30, what, || async {
        let st = plugin_status(s, plugin_type).await;
        check(&st).then_some(st)
    })
    .await
}

/// Waits until the candidate of `plugin_type` is loaded; its status.
async fn candidate_loaded(s: &TestServer, plugin_type: &str) -> Value {
    status_when(s, plugin_type, "the candidate to load", |st| {
        st["candidate"]["loaded"] == true
    })
    .await
}

/// `POST /api/admin/plugins/{type}/{action}`.
async fn stage_call(s: &TestServer, plugin_type: &str, action: &str) -> (u16, Value) {
    s.api(
        "POST",
        &format!("/api/admin/plugins/{plugin_type}/{action}"),
        None,
    )
    .await
}

/// Creates recharge order `no` of `fen` for `user` and pays it with a signed notification;
/// the order's `handler_version` after (panics unless the payment succeeded).
async fn pay(s: &TestServer, no: &str, user: &str, fen: i64) -> String {
    s.recharge_order(no, user, fen).await;
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml(no, fen, &format!("T{no}")))
        .await;
    assert_eq!(
        (st, v2_return_code(&body)),
        (200, "SUCCESS"),
        "{no}: {body}"
    );
    let o = s.order(no).await;
    assert_eq!(o.status, 1, "{no} paid");
    o.handler_version.unwrap_or_default()
}

/// The balance of `users/{user}`.
async fn balance(s: &TestServer, user: &str) -> Value {
    s.document("users", user).await.unwrap_or(Value::Null)["balance"].clone()
}

/// The history of `label` (`recharge`, `recharge.next`, …), newest first: (event, sha256).
async fn history(s: &TestServer, label: &str) -> Vec<(String, String)> {
    let (st, v) = s
        .api(
            "GET",
            &format!("/api/admin/plugins/history?type={label}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or("").to_owned(),
                e["sha256"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// What the folder holds after `recharge` was promoted from `next` over `serving` (or
/// rolled back): the SHA-256 of each file.
fn layout(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect()
}

/// The builds' files: (`recharge` wasm, its manifest, `recharge-double` wasm, its manifest).
fn builds() -> (String, String, String, String) {
    let (old, old_toml) = built_files("recharge");
    let (new, new_toml) = built_files("recharge-double");
    (
        old,
        old_toml.expect("recharge has a manifest"),
        new,
        new_toml.expect("recharge-double has a manifest"),
    )
}

// ---------------------------------------------------------------------------------------
// Candidates

#[tokio::test]
async fn a_staged_candidate_is_shown_never_serves_and_a_broken_one_harms_nothing() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let _watch = s.app.watch_plugins().expect("watch");
    let dir = s.plugins_dir();
    let (old_sha, _, new_sha, _) = builds();

    stage_candidate(&dir, "recharge", "recharge-double");
    let st = candidate_loaded(&s, "recharge").await;
    let c = &st["candidate"];
    assert_eq!(c["sha256"], json!(new_sha), "{st}");
    assert_eq!(c["version"], "1.1.0-double", "{st}");
    assert_eq!(c["collections"], json!(["users"]), "{st}");
    assert!(c["loaded_at"].is_i64() && c["last_error"].is_null(), "{st}");
    let build = c["build"].as_str().unwrap_or("");
    assert_eq!(
        build,
        format!("recharge@1.1.0-double sha256:{}", &new_sha[..12])
    );
    assert_eq!(
        (st["sha256"].clone(), st["has_previous"].clone()),
        (json!(old_sha), json!(false)),
        "the serving build is untouched: {st}"
    );
    let candidate = s.app.plugins.candidate("recharge").expect("candidate");
    assert_eq!(candidate.plugin_type, "recharge");
    assert_eq!(candidate.build_id(), build);
    assert!(s.app.plugins.candidate("vip").is_none());

    // It serves nothing: a payment runs the serving build and credits once.
    let paid_by = pay(&s, "S000000001", "u1", 100).await;
    assert!(paid_by.contains(&old_sha[..12]), "{paid_by}");
    assert_eq!(balance(&s, "u1").await, json!(100));
    assert_eq!(
        history(&s, "recharge.next").await,
        vec![("loaded".into(), new_sha.clone())]
    );

    // A broken candidate file (written in place): its error shows, the candidate loaded
    // before stays, and the serving build keeps serving and stays ready.
    std::fs::write(
        dir.join("recharge.next.wasm"),
        b"\0asm this is not a component",
    )
    .expect("write");
    let st = status_when(&s, "recharge", "the candidate's load error", |st| {
        st["candidate"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a valid WebAssembly component"))
    })
    .await;
    assert!(
        st["candidate"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("recharge.next.wasm")),
        "names the file: {st}"
    );
    assert_eq!(st["candidate"]["sha256"], json!(new_sha), "{st}");
    assert_eq!(
        (
            st["loaded"].clone(),
            st["sha256"].clone(),
            st["last_error"].clone()
        ),
        (json!(true), json!(old_sha), Value::Null),
        "{st}"
    );
    let ready = s.http.get(s.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    pay(&s, "S000000002", "u1", 100).await;
    assert_eq!(balance(&s, "u1").await, json!(200));

    // Promoting it now would promote files that are not the build loaded: refused.
    let before = folder_files(&dir);
    let (st, v) = stage_call(&s, "recharge", "promote").await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("recharge.next.wasm changed since")),
        "{v}"
    );
    assert_eq!(folder_files(&dir), before, "nothing moved");
    assert_eq!(
        plugin_status(&s, "recharge").await["sha256"],
        json!(old_sha)
    );

    // Removed: gone from the status, unloaded in the history.
    std::fs::remove_file(dir.join("recharge.next.wasm")).expect("rm");
    std::fs::remove_file(dir.join("recharge.next.toml")).expect("rm");
    status_when(&s, "recharge", "the candidate to go", |st| {
        st["candidate"].is_null() && st["loaded"] == true
    })
    .await;
    assert!(s.app.plugins.candidate("recharge").is_none());
    let events: Vec<String> = history(&s, "recharge.next")
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    // (A watcher may catch the in-place write half-way: one refusal or more.)
    assert!(
        events.len() >= 3
            && events[0] == "unloaded"
            && events[events.len() - 1] == "loaded"
            && events[1..events.len() - 1].iter().all(|e| e == "refused"),
        "{events:?}"
    );

    // A candidate that never loaded: promote says why.
    std::fs::write(dir.join("recharge.next.wasm"), b"not even wasm").expect("write");
    status_when(&s, "recharge", "the new candidate's error", |st| {
        st["candidate"]["last_error"].is_string() && st["candidate"]["loaded"] == false
    })
    .await;
    let (st, v) = stage_call(&s, "recharge", "promote").await;
    assert_eq!(st, 409, "{v}");
    let e = v["error"].as_str().unwrap_or("");
    assert!(
        e.contains("failed to load") && e.contains("recharge.next.wasm"),
        "{v}"
    );

    // A candidate whose calls keep timing out (its breaker open) is not promoted: it
    // would fail the payments. (Shadow runs record its calls; the timeouts are recorded
    // here directly.)
    std::fs::remove_file(dir.join("recharge.next.wasm")).expect("rm");
    stage_candidate(&dir, "recharge", "recharge-double");
    candidate_loaded(&s, "recharge").await;
    let candidate = s.app.plugins.candidate("recharge").expect("candidate");
    let timeout = Err::<(), _>(paynotify::plugins::HandlerFailure::Timeout(
        std::time::Duration::from_millis(200),
    ));
    while !candidate.breaker.record(&timeout) {}
    let before = folder_files(&dir);
    let (st, v) = stage_call(&s, "recharge", "promote").await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("is failing fast after")),
        "{v}"
    );
    assert_eq!(folder_files(&dir), before, "nothing moved");
    assert_eq!(
        plugin_status(&s, "recharge").await["sha256"],
        json!(old_sha)
    );
    std::fs::remove_file(dir.join("recharge.next.toml")).expect("rm");

    // Nothing staged at all.
    std::fs::remove_file(dir.join("recharge.next.wasm")).expect("rm");
    status_when(&s, "recharge", "the candidate to go", |st| {
        st["candidate"].is_null()
    })
    .await;
    let (st, v) = stage_call(&s, "recharge", "promote").await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("nothing is staged for `recharge`")),
        "{v}"
    );

    // A broken candidate of a type nothing serves is listed, and the host stays ready.
    std::fs::write(dir.join("vip.next.wasm"), b"\0asm cut short").expect("write");
    let st = status_when(&s, "vip", "vip's candidate error", |st| {
        st["candidate"]["last_error"].is_string()
    })
    .await;
    assert_eq!(
        (st["loaded"].clone(), st["last_error"].clone()),
        (json!(false), Value::Null),
        "{st}"
    );
    let ready = s.http.get(s.url("/readyz")).send().await.expect("readyz");
    assert_eq!(
        ready.status().as_u16(),
        200,
        "a candidate never makes the host unready"
    );
    // And `vip.prev.wasm` is never loaded by a scan.
    std::fs::copy(plugin_wasm("recharge"), dir.join("vip.prev.wasm")).expect("copy");
    let report = s.reload_plugins().await;
    assert!(
        !report.to_string().contains("vip.prev"),
        "a .prev file is never scanned: {report}"
    );
    assert!(s.app.plugins.get("vip").is_none());
    assert_eq!(plugin_status(&s, "vip").await["has_previous"], true);
}

// ---------------------------------------------------------------------------------------
// Promote

#[tokio::test]
async fn promote_and_rollbacks_under_load_pay_every_order_exactly_once() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let _watch = s.app.watch_plugins().expect("watch");
    let dir = s.plugins_dir();
    let (old_sha, old_toml, new_sha, new_toml) = builds();
    stage_candidate(&dir, "recharge", "recharge-double");
    candidate_loaded(&s, "recharge").await;

    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Four clients pay orders back to back until told to stop.
    let lane = || async {
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let no = format!("P{i:09}");
            let fen = 10 + i as i64;
            s.recharge_order(&no, &format!("u{}", i % 7), fen).await;
            let (st, body) = s
                .notify_v2(wechat_v2::paid_xml(&no, fen, &format!("T{i:09}")))
                .await;
            answers.push((i, st, body));
        }
        answers
    };
    // Promote after 50 payments, roll back after 50 more, and roll back again (to the
    // promoted build) after 50 more: each swap with payments in flight.
    let conductor = async {
        let mut swaps = Vec::new();
        let mut at = 0;
        for action in ["promote", "rollback", "rollback"] {
            wait_until(60, &format!("50 payments before the {action}"), || async {
                (next.load(Ordering::Relaxed) >= at + 50).then_some(())
            })
            .await;
            swaps.push(stage_call(&s, "recharge", action).await);
            at = next.load(Ordering::Relaxed);
        }
        wait_until(60, "50 payments after the last swap", || async {
            (next.load(Ordering::Relaxed) >= at + 50).then_some(())
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        swaps
    };
    let (swaps, a, b, c, d) = tokio::join!(conductor, lane(), lane(), lane(), lane());
    let serving: Vec<Value> = swaps
        .iter()
        .map(|(st, v)| {
            assert_eq!(*st, 200, "{v}");
            v["serving_sha256"].clone()
        })
        .collect();
    assert_eq!(serving, [json!(new_sha), json!(old_sha), json!(new_sha)]);
    let promoted = &swaps[0].1;
    assert_eq!(promoted["type"], "recharge");
    assert_eq!(
        promoted["serving"],
        json!(format!("recharge@1.1.0-double sha256:{}", &new_sha[..12]))
    );
    assert_eq!(promoted["previous_sha256"], json!(old_sha));
    assert!(
        promoted["moved"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("recharge.next.wasm → recharge.wasm"))),
        "{promoted}"
    );

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
        let o = s.order(&format!("P{i:09}")).await;
        assert_eq!(o.status, 1, "order {i}");
        let build = o.handler_version.unwrap_or_default();
        let fen = 10 + *i as i64;
        expected[i % 7] += if build.contains(&old_sha[..12]) {
            by_old += 1;
            fen
        } else if build.contains(&new_sha[..12]) {
            by_new += 1;
            2 * fen
        } else {
            panic!("order {i} handled by unknown build {build}");
        };
    }
    for (u, want) in expected.iter().enumerate() {
        assert_eq!(
            balance(&s, &format!("u{u}")).await,
            json!(want),
            "user u{u}"
        );
    }
    // 50 payments started between swaps, up to one per client still in flight at the
    // next swap.
    assert!(by_old >= 92 && by_new >= 96, "old {by_old}, new {by_new}");
    assert_eq!(
        s.notifications().await.len(),
        n,
        "every notification stored"
    );

    // The folder as documented: the candidate's files serve, the old ones are `.prev`.
    assert_eq!(
        folder_files(&dir),
        layout(&[
            ("recharge.wasm", &new_sha),
            ("recharge.toml", &new_toml),
            ("recharge.prev.wasm", &old_sha),
            ("recharge.prev.toml", &old_toml),
        ])
    );
    let st = plugin_status(&s, "recharge").await;
    assert_eq!(
        (
            st["sha256"].clone(),
            st["version"].clone(),
            st["candidate"].clone(),
            st["has_previous"].clone()
        ),
        (
            json!(new_sha),
            json!("1.1.0-double"),
            Value::Null,
            json!(true)
        ),
        "{st}"
    );
    // The promoted build is stamped for its new paths: the watcher's scan after the
    // renames and a forced rescan both find it unchanged, and nothing else is recorded.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let report = s.reload_plugins().await;
    assert_eq!(
        report["report"]["unchanged"],
        json!(["recharge"]),
        "{report}"
    );
    assert_eq!(report["report"]["loaded"], json!([]), "{report}");
    assert_eq!(
        history(&s, "recharge").await,
        vec![
            ("rolled_back".into(), new_sha.clone()),
            ("rolled_back".into(), old_sha.clone()),
            ("promoted".into(), new_sha.clone()),
            ("loaded".into(), old_sha.clone())
        ]
    );
    println!("promote, rollback, rollback under load: {n} payments, {by_old} on the old build, {by_new} on the promoted one, 0 failed");
}

// ---------------------------------------------------------------------------------------
// Rollback

#[tokio::test]
async fn rollback_returns_and_returns_again_and_refusals_change_nothing() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let _watch = s.app.watch_plugins().expect("watch");
    let dir = s.plugins_dir();
    let (old_sha, old_toml, new_sha, new_toml) = builds();

    // Nothing to roll back to, nothing to promote, no such type: refused, nothing moves.
    let before = folder_files(&dir);
    let (st, v) = stage_call(&s, "recharge", "rollback").await;
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("no previous build of `recharge`")
                && e.contains("recharge.prev.wasm")),
        "{v}"
    );
    let (st, v) = stage_call(&s, "recharge", "promote").await;
    assert_eq!(st, 409, "{v}");
    let (st, v) = stage_call(&s, "a.b", "promote").await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(folder_files(&dir), before);

    stage_candidate(&dir, "recharge", "recharge-double");
    candidate_loaded(&s, "recharge").await;
    let (st, v) = stage_call(&s, "recharge", "promote").await;
    assert_eq!(st, 200, "{v}");
    assert!(pay(&s, "B000000001", "u1", 100)
        .await
        .contains(&new_sha[..12]));
    assert_eq!(balance(&s, "u1").await, json!(200));
    let promoted = folder_files(&dir);

    // Rollback: the old build serves new orders, the files change places.
    let (st, v) = stage_call(&s, "recharge", "rollback").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["serving_sha256"], json!(old_sha), "{v}");
    assert_eq!(v["previous_sha256"], json!(new_sha), "{v}");
    assert!(pay(&s, "B000000002", "u1", 100)
        .await
        .contains(&old_sha[..12]));
    assert_eq!(balance(&s, "u1").await, json!(300));
    assert_eq!(
        folder_files(&dir),
        layout(&[
            ("recharge.wasm", &old_sha),
            ("recharge.toml", &old_toml),
            ("recharge.prev.wasm", &new_sha),
            ("recharge.prev.toml", &new_toml),
        ])
    );
    let st = plugin_status(&s, "recharge").await;
    assert_eq!(
        (st["sha256"].clone(), st["has_previous"].clone()),
        (json!(old_sha), json!(true))
    );

    // A second rollback returns to the promoted build.
    let (st, v) = stage_call(&s, "recharge", "rollback").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["serving_sha256"], json!(new_sha), "{v}");
    assert!(pay(&s, "B000000003", "u1", 100)
        .await
        .contains(&new_sha[..12]));
    assert_eq!(balance(&s, "u1").await, json!(500));
    assert_eq!(folder_files(&dir), promoted);

    // A staged candidate is left alone by a rollback.
    stage_candidate(&dir, "recharge", "recharge");
    status_when(&s, "recharge", "the new candidate", |st| {
        st["candidate"]["sha256"] == json!(old_sha)
    })
    .await;
    let (st, v) = stage_call(&s, "recharge", "rollback").await;
    assert_eq!(st, 200, "{v}");
    let st = plugin_status(&s, "recharge").await;
    assert_eq!(st["sha256"], json!(old_sha), "{st}");
    assert_eq!(st["candidate"]["sha256"], json!(old_sha), "{st}");
    assert!(dir.join("recharge.next.wasm").is_file());

    // A previous build that does not load: refused with the reason, nothing changes.
    std::fs::write(dir.join("recharge.prev.wasm"), b"\0asm broken").expect("write");
    let before = folder_files(&dir);
    let (st, v) = stage_call(&s, "recharge", "rollback").await;
    assert_eq!(st, 409, "{v}");
    let e = v["error"].as_str().unwrap_or("");
    assert!(
        e.contains("recharge.prev.wasm does not load") && e.contains("not a valid WebAssembly"),
        "{v}"
    );
    assert_eq!(folder_files(&dir), before);
    assert!(pay(&s, "B000000004", "u1", 100)
        .await
        .contains(&old_sha[..12]));
    assert_eq!(balance(&s, "u1").await, json!(600));

    let events: Vec<String> = history(&s, "recharge")
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        events,
        [
            "rolled_back",
            "rolled_back",
            "rolled_back",
            "promoted",
            "loaded"
        ]
    );
    assert_eq!(history(&s, "recharge.prev").await[0].0, "refused");
}

// ---------------------------------------------------------------------------------------
// Signed candidates

/// Writes built plugin `name` into `dir` as `{label}.wasm` (`recharge`, `recharge.next`)
/// with its manifest naming type `plugin_type`, both signed by `key` (unsigned with
/// `None`); the `.wasm` is renamed in last.
fn deploy_signed(dir: &Path, label: &str, plugin_type: &str, name: &str, key: Option<&Key>) {
    let shipped = plugin_manifest(name)
        .map(|p| std::fs::read_to_string(p).expect("manifest"))
        .unwrap_or_default();
    let toml = dir.join(format!("{label}.toml"));
    std::fs::write(&toml, format!("type = \"{plugin_type}\"\n{shipped}")).expect("manifest");
    let staging = dir.join(format!(".{label}.staging"));
    std::fs::create_dir_all(&staging).expect("staging dir");
    let wasm = staging.join(format!("{label}.wasm"));
    std::fs::copy(plugin_wasm(name), &wasm).expect("copy wasm");
    for sig in [format!("{label}.toml.sig"), format!("{label}.wasm.sig")] {
        let _ = std::fs::remove_file(dir.join(sig));
    }
    if let Some(k) = key {
        sign(k, &toml);
        sign(k, &wasm);
        std::fs::rename(
            staging.join(format!("{label}.wasm.sig")),
            dir.join(format!("{label}.wasm.sig")),
        )
        .expect("move sig");
    }
    std::fs::rename(&wasm, dir.join(format!("{label}.wasm"))).expect("move wasm");
    std::fs::remove_dir_all(&staging).ok();
}

#[tokio::test]
async fn signed_candidates_and_previous_builds_are_checked_like_serving_builds() {
    let keys = tempfile::tempdir().expect("tmp");
    let deployer = key(keys.path(), "deploy");
    let stranger = key(keys.path(), "stranger");
    let signers = keys.path().join("allowed_signers");
    std::fs::write(
        &signers,
        format!("deploy@example.com {}\n", deployer.public_line),
    )
    .expect("allowed_signers");
    let mut options = Options::with_plugins(&[]);
    options.plugins_config = format!("allowed_signers = \"{}\"", signers.display());
    let s = TestServer::start(options).await;
    let dir = s.plugins_dir();
    let (old_sha, _, new_sha, _) = builds();
    deploy_signed(&dir, "recharge", "recharge", "recharge", Some(&deployer));
    s.reload_plugins().await;
    assert_eq!(
        plugin_status(&s, "recharge").await["sha256"],
        json!(old_sha)
    );

    // Unsigned, signed by a key not allowed, a signed build of another type: refused,
    // each with its reason; the serving build is untouched and promote says why.
    let refusals: [(&str, Option<&Key>, &str); 3] = [
        ("unsigned", None, "recharge.next.wasm is not signed"),
        ("stranger", Some(&stranger), "is not an allowed signer"),
        (
            "vip",
            Some(&deployer),
            "signed as a handler of type `vip`, not `recharge`",
        ),
    ];
    for (what, k, expect) in refusals {
        let name = if what == "vip" {
            "vip"
        } else {
            "recharge-double"
        };
        deploy_signed(&dir, "recharge.next", "recharge", name, k);
        s.reload_plugins().await;
        let st = plugin_status(&s, "recharge").await;
        let err = st["candidate"]["last_error"].as_str().unwrap_or("");
        assert!(err.contains(expect), "{what}: {st}");
        assert_eq!(st["candidate"]["loaded"], false, "{what}: {st}");
        assert_eq!(
            (st["sha256"].clone(), st["last_error"].clone()),
            (json!(old_sha), Value::Null),
            "{what}: {st}"
        );
        let (code, v) = stage_call(&s, "recharge", "promote").await;
        assert_eq!(code, 409, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(expect)),
            "{what}: {v}"
        );
    }

    // Signed by the deployer: loads, shows its signer, and promotes with its signatures.
    deploy_signed(
        &dir,
        "recharge.next",
        "recharge",
        "recharge-double",
        Some(&deployer),
    );
    s.reload_plugins().await;
    let st = plugin_status(&s, "recharge").await;
    assert_eq!(
        st["candidate"]["signer"]["principal"], "deploy@example.com",
        "{st}"
    );
    let (code, v) = stage_call(&s, "recharge", "promote").await;
    assert_eq!(code, 200, "{v}");
    assert!(
        v["serving"]
            .as_str()
            .is_some_and(|b| b.contains(&new_sha[..12]) && b.contains("signed deploy@example.com")),
        "{v}"
    );
    let files = folder_files(&dir);
    for f in [
        "recharge.wasm.sig",
        "recharge.toml.sig",
        "recharge.prev.wasm.sig",
        "recharge.prev.toml.sig",
    ] {
        assert!(files.contains_key(f), "{f} missing: {files:?}");
    }
    assert!(!files.keys().any(|f| f.contains(".next")), "{files:?}");
    let report = s.reload_plugins().await;
    assert_eq!(
        report["report"]["unchanged"],
        json!(["recharge"]),
        "{report}"
    );

    // A previous build whose manifest was edited after signing: the rollback is refused
    // with the signature's reason, and nothing moves.
    let prev_toml = dir.join("recharge.prev.toml");
    let edited = std::fs::read_to_string(&prev_toml).expect("read") + "\n# edited\n";
    std::fs::write(&prev_toml, edited).expect("edit");
    let before = folder_files(&dir);
    let (code, v) = stage_call(&s, "recharge", "rollback").await;
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("recharge.prev.toml.sig does not match")),
        "{v}"
    );
    assert_eq!(folder_files(&dir), before);
    assert_eq!(
        plugin_status(&s, "recharge").await["sha256"],
        json!(new_sha)
    );
    // Signed again: the rollback goes through, signatures and all.
    sign(&deployer, &prev_toml);
    let (code, v) = stage_call(&s, "recharge", "rollback").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["serving_sha256"], json!(old_sha), "{v}");
    assert!(pay(&s, "G000000001", "u1", 100)
        .await
        .contains("signed deploy@example.com"));
}

// ---------------------------------------------------------------------------------------
// CLI

#[tokio::test]
async fn the_cli_promotes_and_rolls_back_through_the_running_server() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let (old_sha, _, new_sha, _) = builds();
    let config = s.dir.path().join("paynotify.toml");
    let listen = s.addr.to_string();
    let env = [("PAYNOTIFY_SERVER_LISTEN", listen.as_str())];
    let cli = |args: &'static [&'static str]| paynotify_cli(&config, args, &env);

    // Staged and loaded by a forced rescan (no watcher here).
    stage_candidate(&s.plugins_dir(), "recharge", "recharge-double");
    let reload = ok_stdout(&cli(&["plugins", "reload"]).await, "plugins reload");
    assert!(reload.contains("recharge.next"), "{reload}");
    // `plugins check` checks a staged file as a build of its type.
    let next_wasm = s.plugins_dir().join("recharge.next.wasm");
    let checked = ok_stdout(
        &paynotify_cli(
            &config,
            &[
                "--json",
                "plugins",
                "check",
                next_wasm.to_str().expect("utf-8"),
            ],
            &env,
        )
        .await,
        "plugins check recharge.next.wasm",
    );
    let checked: Value = serde_json::from_str(checked.trim()).expect("JSON");
    assert_eq!(
        (
            checked["ok"].clone(),
            checked["type"].clone(),
            checked["sha256"].clone()
        ),
        (json!(true), json!("recharge"), json!(new_sha)),
        "{checked}"
    );
    let list = ok_stdout(&cli(&["plugins", "list"]).await, "plugins list");
    assert!(
        list.contains("CANDIDATE (.next)")
            && list.contains(&format!("1.1.0-double {}", &new_sha[..12])),
        "{list}"
    );

    let text = ok_stdout(
        &cli(&["plugins", "promote", "recharge"]).await,
        "plugins promote",
    );
    assert!(text.starts_with("recharge: promoted\n"), "{text}");
    assert!(
        text.contains(&format!(
            "serving now: recharge@1.1.0-double sha256:{}\n",
            &new_sha[..12]
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "sha256:{} (kept as recharge.prev.wasm)",
            &old_sha[..12]
        )),
        "{text}"
    );
    assert!(
        text.contains("  recharge.next.wasm → recharge.wasm\n")
            && text.contains("  recharge.wasm → recharge.prev.wasm\n"),
        "{text}"
    );
    let again = cli(&["plugins", "promote", "recharge"]).await;
    assert!(!again.status.success(), "nothing staged: fails");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("409") && err.contains("nothing is staged for `recharge`"),
        "{err}"
    );

    let out = ok_stdout(
        &cli(&["plugins", "rollback", "recharge", "--json"]).await,
        "plugins rollback --json",
    );
    let v: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["serving_sha256"], json!(old_sha), "{v}");
    assert_eq!(v["previous_sha256"], json!(new_sha), "{v}");
    let list = ok_stdout(&cli(&["plugins", "list"]).await, "plugins list");
    let row = list
        .lines()
        .find(|l| l.starts_with("recharge "))
        .unwrap_or("");
    assert!(row.trim_end().ends_with("yes"), "PREV: {list}");
    let history = ok_stdout(
        &cli(&["plugins", "history", "recharge"]).await,
        "plugins history",
    );
    assert!(
        history.contains("rolled_back") && history.contains("promoted"),
        "{history}"
    );
    let next = ok_stdout(
        &cli(&["plugins", "history", "recharge.next"]).await,
        "plugins history recharge.next",
    );
    assert!(
        next.contains("recharge.next") && next.contains("loaded"),
        "{next}"
    );
    let bad = cli(&["plugins", "rollback", "../recharge"]).await;
    assert!(!bad.status.success(), "a bad type is refused");
}

// ---------------------------------------------------------------------------------------
// Console

/// A console POST to try: what it is, its headers, its form, and the status it must get.
type Forged = (
    &'static str,
    Vec<(&'static str, String)>,
    Vec<(&'static str, String)>,
    u16,
);

/// An HTTP client that does not follow redirects.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The console's plugins page (or `path`): status and body.
async fn console_get(
    s: &TestServer,
    http: &reqwest::Client,
    cookie: &str,
    path: &str,
) -> (u16, String) {
    let r = http
        .get(s.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .expect("get");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_in(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a csrf field");
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').expect("end of value")].to_owned()
}

#[tokio::test]
async fn the_console_buttons_promote_and_roll_back_and_refuse_forged_posts() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let (old_sha, _, new_sha, _) = builds();
    let dir = s.plugins_dir();
    stage_candidate(&dir, "recharge", "recharge-double");
    s.reload_plugins().await;
    let http = client();
    let cookie = s.console_cookie().await;
    let origin = format!("http://{}", s.addr);

    let (st, page) = console_get(&s, &http, &cookie, "/console/plugins").await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains(r#"id="promote-recharge""#)
            && page.contains(r#"action="/console/plugins/recharge/promote""#)
            && page.contains("1.1.0-double"),
        "{page}"
    );
    assert!(
        !page.contains(r#"id="rollback-recharge""#),
        "nothing to roll back yet"
    );
    let csrf = csrf_in(&page);
    let post =
        |path: &str, headers: Vec<(&'static str, String)>, form: Vec<(&'static str, String)>| {
            let mut req = http.post(s.url(path));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.form(&form).send()
        };
    let serving = || async { plugin_status(&s, "recharge").await["sha256"].clone() };

    // Forged and unconfirmed posts: refused, and nothing changes.
    let before = folder_files(&dir);
    let confirm = ("confirm", "yes".to_owned());
    let forged: Vec<Forged> = vec![
        (
            "no CSRF token",
            vec![("origin", origin.clone()), ("cookie", cookie.clone())],
            vec![confirm.clone()],
            403,
        ),
        (
            "wrong CSRF token",
            vec![("origin", origin.clone()), ("cookie", cookie.clone())],
            vec![("csrf", "0000".into()), confirm.clone()],
            403,
        ),
        (
            "foreign Origin",
            vec![
                ("origin", "http://evil.example".into()),
                ("cookie", cookie.clone()),
            ],
            vec![("csrf", csrf.clone()), confirm.clone()],
            403,
        ),
        (
            "not confirmed",
            vec![("origin", origin.clone()), ("cookie", cookie.clone())],
            vec![("csrf", csrf.clone())],
            422,
        ),
    ];
    for (what, headers, form, status) in forged {
        let r = post("/console/plugins/recharge/promote", headers, form)
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), status, "{what}");
        let body = r.text().await.expect("body");
        assert!(body.contains("Nothing was"), "{what}: {body}");
        assert_eq!(serving().await, json!(old_sha), "{what}: still serving");
        assert_eq!(folder_files(&dir), before, "{what}: nothing moved");
    }

    // The real button: promoted, and the page says what serves now.
    let r = post(
        "/console/plugins/recharge/promote",
        vec![("origin", origin.clone()), ("cookie", cookie.clone())],
        vec![("csrf", csrf.clone()), confirm.clone()],
    )
    .await
    .expect("post");
    assert_eq!(r.status().as_u16(), 303);
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(location, "/console/plugins?done=promoted&type=recharge");
    assert_eq!(serving().await, json!(new_sha));
    let (_, page) = console_get(&s, &http, &cookie, &location).await;
    assert!(
        page.contains(&format!(
            "recharge promoted: recharge@1.1.0-double sha256:{} serves it now.",
            &new_sha[..12]
        )),
        "{page}"
    );
    assert!(page.contains(r#"id="rollback-recharge""#), "{page}");
    assert!(!page.contains(r#"id="promote-recharge""#), "{page}");

    // Roll back: without the token refused, with it done.
    let promoted = folder_files(&dir);
    let r = post(
        "/console/plugins/recharge/rollback",
        vec![("origin", origin.clone()), ("cookie", cookie.clone())],
        vec![confirm.clone()],
    )
    .await
    .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(serving().await, json!(new_sha));
    assert_eq!(folder_files(&dir), promoted);
    let r = post(
        "/console/plugins/recharge/rollback",
        vec![("origin", origin.clone()), ("cookie", cookie.clone())],
        vec![("csrf", csrf.clone()), confirm.clone()],
    )
    .await
    .expect("post");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(serving().await, json!(old_sha));
    let (_, page) = console_get(
        &s,
        &http,
        &cookie,
        "/console/plugins?done=rolled_back&type=recharge",
    )
    .await;
    assert!(page.contains("recharge rolled back: recharge@"), "{page}");

    // A refusal shows why: nothing is staged now.
    let r = post(
        "/console/plugins/recharge/promote",
        vec![("origin", origin.clone()), ("cookie", cookie.clone())],
        vec![("csrf", csrf.clone()), confirm.clone()],
    )
    .await
    .expect("post");
    assert_eq!(r.status().as_u16(), 409);
    let body = r.text().await.expect("body");
    assert!(body.contains("nothing is staged for"), "{body}");
    // The candidate's history page takes `TYPE.next`.
    let (st, page) =
        console_get(&s, &http, &cookie, "/console/plugins/recharge.next/history").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("event-loaded"), "{page}");
}
