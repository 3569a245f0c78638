//! Signed handlers, the compiled cache and reload by content, played the way the
//! attacker who can write the plugins folder would (threat model, attacker 4): unsigned,
//! badly signed, foreign-signed and edited files, signed files moved to another type, a
//! planted compiled artefact, and a replacement that keeps size and mtime.
//!
//! Keys are made here with the real `ssh-keygen` (package `openssh-client`), and files are
//! signed with it exactly as ops would (`ssh-keygen -Y sign -n paynotify-plugin`).

use std::path::{Path, PathBuf};
use std::process::Command;

use paynotify_tests::{
    plugin_manifest, plugin_wasm,
    process::paynotify_bin,
    rebuilt_plugin, sha256_hex,
    signing::{key, sign, sign_as, Key},
    v2_return_code, wechat_v2, Options, TestServer,
};
use serde_json::Value;

/// The shipped manifest of built plugin `name`, naming `plugin_type` as its type.
fn manifest_for(plugin_type: &str, name: &str) -> String {
    let shipped = plugin_manifest(name)
        .map(|p| std::fs::read_to_string(p).expect("manifest"))
        .unwrap_or_default();
    format!("type = \"{plugin_type}\"\n{shipped}")
}

/// Writes built plugin `name` as `{plugin_type}.wasm` with its manifest into `dir`, both
/// signed by `key` (or unsigned with `None`). The `.wasm` is renamed in last.
fn deploy(dir: &Path, plugin_type: &str, name: &str, key: Option<&Key>) {
    let toml = dir.join(format!("{plugin_type}.toml"));
    std::fs::write(&toml, manifest_for(plugin_type, name)).expect("manifest");
    let staged = dir.join(format!(".{plugin_type}.staged"));
    std::fs::create_dir_all(&staged).expect("staging dir");
    let wasm = staged.join(format!("{plugin_type}.wasm"));
    std::fs::copy(plugin_wasm(name), &wasm).expect("copy wasm");
    if let Some(k) = key {
        sign(k, &toml);
        sign(k, &wasm);
        std::fs::rename(
            staged.join(format!("{plugin_type}.wasm.sig")),
            dir.join(format!("{plugin_type}.wasm.sig")),
        )
        .expect("move sig");
    }
    std::fs::rename(&wasm, dir.join(format!("{plugin_type}.wasm"))).expect("move wasm");
    std::fs::remove_dir_all(&staged).ok();
}

fn allowed_signers(dir: &Path, lines: &[String]) -> PathBuf {
    let path = dir.join("allowed_signers");
    std::fs::write(&path, lines.join("\n") + "\n").expect("allowed_signers");
    path
}

async fn status(s: &TestServer, plugin_type: &str) -> Value {
    let (code, list) = s.api("GET", "/api/admin/plugins", None).await;
    assert_eq!(code, 200, "{list}");
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["type"] == plugin_type).cloned())
        .unwrap_or(Value::Null)
}

/// A server with `allowed_signers` set to `signers`, whose plugins directory is then
/// filled by `prepare` and loaded.
async fn signed_server(signers: &Path, prepare: impl FnOnce(&Path)) -> TestServer {
    let mut options = Options::with_plugins(&[]);
    options.plugins_config = format!("allowed_signers = \"{}\"", signers.display());
    let s = TestServer::start(options).await;
    prepare(&s.plugins_dir());
    s.reload_plugins().await;
    s
}

/// Reloads `s` (forced) and checks that recharge's new files were refused with a reason
/// containing `expect`, while the `serving` build (its SHA-256) kept serving.
async fn refused(s: &TestServer, serving: &Value, what: &str, expect: &str) {
    s.reload_plugins().await;
    let st = status(s, "recharge").await;
    assert_eq!(st["loaded"], true, "{what}: {st}");
    assert_eq!(
        &st["sha256"], serving,
        "{what}: the signed build keeps serving"
    );
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(err.contains(expect), "{what}: expected `{expect}` in {err}");
}

/// Pays a new recharge order on `s`; its `handler_version` once paid.
async fn pay_recharge(s: &TestServer, no: &str) -> String {
    s.recharge_order(no, "u1", 100).await;
    let (code, body) = s
        .notify_v2(wechat_v2::paid_xml(no, 100, &format!("T{no}")))
        .await;
    assert_eq!((code, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
    s.order(no).await.handler_version.expect("handler_version")
}

#[tokio::test]
async fn a_signed_handler_runs_and_its_signer_is_shown_and_kept_on_the_order() {
    let keys = tempfile::tempdir().expect("tmp");
    let deployer = key(keys.path(), "deploy");
    let signers = allowed_signers(
        keys.path(),
        &[format!("deploy@example.com {}", deployer.public_line)],
    );
    let s = signed_server(&signers, |dir| {
        deploy(dir, "recharge", "recharge", Some(&deployer))
    })
    .await;
    let st = status(&s, "recharge").await;
    assert_eq!(st["loaded"], true, "{st}");
    assert_eq!(st["signer"]["principal"], "deploy@example.com", "{st}");
    assert_eq!(
        st["signer"]["fingerprint"],
        deployer.fingerprint.as_str(),
        "{st}"
    );
    let build = pay_recharge(&s, "SIGNED-1").await;
    assert!(
        build.starts_with("recharge@")
            && build.ends_with(&format!(
                "signed deploy@example.com {}",
                deployer.fingerprint
            )),
        "{build}"
    );
}

/// Each way a file can fail its signature, as (what is deployed, what the refusal says).
#[tokio::test]
async fn every_bad_signature_is_refused_and_the_serving_build_keeps_serving() {
    let keys = tempfile::tempdir().expect("tmp");
    let deployer = key(keys.path(), "deploy");
    let stranger = key(keys.path(), "stranger");
    let git_only = key(keys.path(), "git-only");
    let signers = allowed_signers(
        keys.path(),
        &[
            format!("deploy@example.com {}", deployer.public_line),
            format!(
                "git@example.com namespaces=\"git\" {}",
                git_only.public_line
            ),
        ],
    );
    let s = signed_server(&signers, |dir| {
        deploy(dir, "recharge", "recharge", Some(&deployer))
    })
    .await;
    let dir = s.plugins_dir();
    let serving = status(&s, "recharge").await["sha256"].clone();
    assert!(serving.is_string());

    // Each case replaces the serving recharge build; a forced reload must refuse it,
    // say why, and leave the signed build serving.

    // 1. Unsigned (no .sig at all).
    for f in ["recharge.wasm.sig", "recharge.toml.sig"] {
        std::fs::remove_file(dir.join(f)).expect("remove sig");
    }
    std::fs::write(
        dir.join("recharge.toml"),
        manifest_for("recharge", "recharge") + "\n# edited\n",
    )
    .unwrap();
    refused(&s, &serving, "unsigned", "recharge.wasm is not signed").await;

    // 2. A signature file that is not a signature.
    std::fs::write(
        dir.join("recharge.wasm.sig"),
        "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n",
    )
    .unwrap();
    refused(
        &s,
        &serving,
        "garbage",
        "recharge.wasm.sig is not a readable SSH signature",
    )
    .await;

    // 3. Signed by a key nobody listed.
    sign(&stranger, &dir.join("recharge.wasm"));
    sign(&stranger, &dir.join("recharge.toml"));
    refused(
        &s,
        &serving,
        "stranger",
        &format!("key {} is not an allowed signer", stranger.fingerprint),
    )
    .await;

    // 4. A listed key, but the signature made for git.
    sign_as(&deployer, &dir.join("recharge.wasm"), "git");
    sign_as(&deployer, &dir.join("recharge.toml"), "git");
    refused(&s, &serving, "namespace", "made for namespace `git`").await;

    // 5. A key whose line allows it to sign for git only.
    sign(&git_only, &dir.join("recharge.wasm"));
    sign(&git_only, &dir.join("recharge.toml"));
    refused(&s, &serving, "git-only key", "namespaces=\"git\" only").await;

    // 6. Signed, then the component changed (another build copied over it).
    sign(&deployer, &dir.join("recharge.wasm"));
    sign(&deployer, &dir.join("recharge.toml"));
    std::fs::copy(plugin_wasm("goods"), dir.join("recharge.wasm")).unwrap();
    refused(
        &s,
        &serving,
        "edited wasm",
        "recharge.wasm.sig does not match recharge.wasm",
    )
    .await;

    // 7. The component signed, the manifest not (it grants the capabilities).
    std::fs::copy(plugin_wasm("recharge"), dir.join("recharge.wasm")).unwrap();
    sign(&deployer, &dir.join("recharge.wasm"));
    std::fs::write(
        dir.join("recharge.toml"),
        manifest_for("recharge", "recharge") + "collections = []\n# more\n",
    )
    .unwrap();
    std::fs::remove_file(dir.join("recharge.toml.sig")).unwrap();
    refused(
        &s,
        &serving,
        "unsigned manifest",
        "recharge.toml is not signed",
    )
    .await;

    // 8. The manifest signed, then given more grants.
    std::fs::write(
        dir.join("recharge.toml"),
        manifest_for("recharge", "recharge"),
    )
    .unwrap();
    sign(&deployer, &dir.join("recharge.toml"));
    let granted = std::fs::read_to_string(dir.join("recharge.toml"))
        .unwrap()
        .replace(
            "http_origins = []",
            "http_origins = [\"https://evil.example\"]",
        );
    std::fs::write(dir.join("recharge.toml"), granted).unwrap();
    refused(
        &s,
        &serving,
        "edited manifest",
        "recharge.toml.sig does not match recharge.toml",
    )
    .await;

    // 9. A signed manifest removed, its signature left behind.
    std::fs::remove_file(dir.join("recharge.toml")).unwrap();
    refused(
        &s,
        &serving,
        "removed manifest",
        "a signed manifest was removed",
    )
    .await;

    // 10. A genuinely signed build of another type, dropped in as recharge.
    deploy(&dir, "recharge", "goods", Some(&deployer));
    std::fs::write(dir.join("recharge.toml"), manifest_for("recharge", "goods")).unwrap();
    sign(&deployer, &dir.join("recharge.toml"));
    refused(
        &s,
        &serving,
        "other type's build",
        "signed as a handler of type `goods`, not `recharge`",
    )
    .await;

    // 11. A genuinely signed manifest of another type, dropped in as recharge's.
    std::fs::copy(plugin_wasm("recharge"), dir.join("recharge.wasm")).unwrap();
    sign(&deployer, &dir.join("recharge.wasm"));
    std::fs::write(dir.join("recharge.toml"), manifest_for("goods", "goods")).unwrap();
    sign(&deployer, &dir.join("recharge.toml"));
    refused(
        &s,
        &serving,
        "other type's manifest",
        "type = \"goods\", but the file is the manifest of `recharge`",
    )
    .await;

    // 12. A signed manifest without `type` (it could be copied onto any type).
    std::fs::write(
        dir.join("recharge.toml"),
        manifest_for("recharge", "recharge").replacen("type = \"recharge\"\n", "", 1),
    )
    .unwrap();
    sign(&deployer, &dir.join("recharge.toml"));
    refused(
        &s,
        &serving,
        "manifest without type",
        "add `type = \"recharge\"`",
    )
    .await;

    // Still the signed build paying orders; refusals are counted by reason.
    let build = pay_recharge(&s, "SIGNED-2").await;
    assert!(build.contains("signed deploy@example.com"), "{build}");
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("paynotify_plugin_load_failures_total")
                && l.contains("plugin=\"recharge\"")
                && l.contains("reason=\"signature\"")),
        "{metrics}"
    );

    // Put right, it loads; then its key is revoked and the type stops serving.
    std::fs::write(
        dir.join("recharge.toml"),
        manifest_for("recharge", "recharge"),
    )
    .unwrap();
    sign(&deployer, &dir.join("recharge.toml"));
    s.reload_plugins().await;
    let st = status(&s, "recharge").await;
    assert_eq!(st["last_error"], Value::Null, "{st}");
    allowed_signers(
        keys.path(),
        &[format!(
            "git@example.com namespaces=\"git\" {}",
            git_only.public_line
        )],
    );
    s.reload_plugins().await;
    let st = status(&s, "recharge").await;
    assert_eq!(
        st["loaded"], false,
        "a revoked signer's build stops serving: {st}"
    );
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains(&deployer.fingerprint),
        "{st}"
    );
}

#[test]
fn plugins_check_says_who_signed_a_file_or_why_it_would_be_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let deployer = key(tmp.path(), "deploy");
    let stranger = key(tmp.path(), "stranger");
    let signers = allowed_signers(
        tmp.path(),
        &[format!("deploy@example.com {}", deployer.public_line)],
    );
    let config = tmp.path().join("paynotify.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\nallowed_signers = \"{}\"\ncache_dir = \"{}\"\n",
            signers.display(),
            tmp.path().join("cache").display()
        ),
    )
    .unwrap();
    let check = |file: &Path| {
        Command::new(paynotify_bin())
            .current_dir(tmp.path())
            .arg("--config")
            .arg(&config)
            .args(["plugins", "check"])
            .arg(file)
            .env_remove("PAYNOTIFY_CONFIG")
            .output()
            .expect("run")
    };
    let dir = tmp.path().join("plugins.d");
    std::fs::create_dir_all(&dir).unwrap();
    deploy(&dir, "recharge", "recharge", Some(&deployer));
    let out = check(&dir.join("recharge.wasm"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "signed by: deploy@example.com {}",
            deployer.fingerprint
        )),
        "{stdout}"
    );

    sign(&stranger, &dir.join("recharge.wasm"));
    let out = check(&dir.join("recharge.wasm"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not an allowed signer"), "{stderr}");

    // A broken allowed_signers file stops the command, naming the key and the line.
    std::fs::write(&signers, "deploy@example.com ssh-ed25519 not-base64\n").unwrap();
    let out = check(&dir.join("recharge.wasm"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("plugins.allowed_signers") && stderr.contains(":1:"),
        "{stderr}"
    );
}

#[test]
fn config_check_says_when_unsigned_handlers_are_accepted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("paynotify.toml");
    std::fs::write(&config, "").unwrap();
    let out = Command::new(paynotify_bin())
        .current_dir(tmp.path())
        .arg("--config")
        .arg(&config)
        .args(["config", "check"])
        .env_remove("PAYNOTIFY_CONFIG")
        .output()
        .expect("run");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unsigned handlers are accepted"),
        "{stderr}"
    );
}

/// The artefact files in `cache`, by the SHA-256 prefix of the `.wasm` they were made from.
fn artefacts(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
    v.sort();
    v
}

#[tokio::test]
async fn a_planted_compiled_artefact_is_never_loaded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let with_cache = |url: Option<String>| {
        let mut o = Options::with_plugins(&["recharge", "goods"]).database_url(url);
        o.plugins_cache_dir = Some(cache.clone());
        o
    };
    let first = TestServer::start(with_cache(None)).await;
    let recharge_sha = status(&first, "recharge").await["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let goods_sha = status(&first, "goods").await["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    // `first` stays up: its folder holds the SQLite database the second server opens.
    let url = first.database_url.clone();
    let files = artefacts(&cache);
    let find = |sha: &str| {
        files
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(sha))
            .unwrap_or_else(|| panic!("no artefact for {sha} in {files:?}"))
            .clone()
    };
    // The outside review's attack: goods' artefact planted under recharge's name.
    std::fs::copy(find(&goods_sha), find(&recharge_sha)).expect("plant");

    let second = TestServer::start(with_cache(Some(url))).await;
    let st = status(&second, "recharge").await;
    assert_eq!(
        st["name"], "recharge",
        "recharge's own code serves, not the planted one: {st}"
    );
    assert_eq!(st["sha256"], recharge_sha.as_str());
    let metrics = second
        .http
        .get(second.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rejected: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("paynotify_plugin_cache_rejected_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        rejected >= 1.0,
        "the planted artefact is counted: {metrics}"
    );
    // Compiled again, and cached again, under this host's key.
    let replanted = std::fs::read(find(&recharge_sha)).unwrap();
    assert_ne!(replanted, std::fs::read(find(&goods_sha)).unwrap());
    pay_recharge(&second, "PLANT-1").await;
}

#[tokio::test]
async fn a_cache_folder_others_can_write_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = tmp.path().join("plugins.d");
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = tmp.path().join("paynotify.toml");
    std::fs::write(
        &config_path,
        paynotify_tests::config_toml(
            "127.0.0.1:0",
            None,
            &paynotify_tests::fresh_database_url(tmp.path()),
            &dir,
            "",
        )
        .replacen(
            "[plugins]\n",
            &format!("[plugins]\ncache_dir = \"{}\"\n", cache.display()),
            1,
        ),
    )
    .unwrap();
    let config = paynotify::Config::load(&config_path, Vec::new()).expect("config loads");
    let err = match paynotify::App::start(config).await {
        Ok(_) => panic!("started with a world-writable cache"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("mode 777") && err.contains("chmod 700"),
        "{err}"
    );
}

#[tokio::test]
async fn the_cache_is_not_kept_in_the_plugins_folder() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    assert!(status(&s, "recharge").await["loaded"] == true);
    let in_plugins: Vec<_> = std::fs::read_dir(s.plugins_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        in_plugins.iter().all(|n| n.starts_with("recharge.")),
        "only the handler's own files in the plugins folder: {in_plugins:?}"
    );
    if paynotify_tests::test_backend() == "sqlite" {
        assert_eq!(
            artefacts(&s.dir.path().join("compiled")).len(),
            1,
            "cached beside the database"
        );
    }
}

/// Writes `bytes` over `path` the way `cp -p` / `rsync -t` / tar do: the same size and
/// mtime as before. `in_place` keeps the inode (an overwrite), else a rename brings a new one.
fn same_stamp_replace(path: &Path, bytes: &[u8], in_place: bool) {
    let before = std::fs::metadata(path).unwrap();
    assert_eq!(
        before.len(),
        bytes.len() as u64,
        "the test needs a same-size build"
    );
    let mtime = before.modified().unwrap();
    if in_place {
        std::fs::write(path, bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    } else {
        let tmp = path.with_extension("part");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), mtime)
    );
}

#[tokio::test]
async fn a_replacement_with_the_same_size_and_mtime_is_reloaded() {
    let s = TestServer::start(Options::with_plugins(&[])).await;
    let wasm = s.plugins_dir().join("recharge.wasm");
    std::fs::write(&wasm, rebuilt_plugin("recharge", "v1")).unwrap();
    s.reload_plugins().await;
    assert_eq!(
        status(&s, "recharge").await["sha256"],
        sha256_hex(&rebuilt_plugin("recharge", "v1"))
    );

    // Found by the watcher's own (unforced) scan: a new inode.
    let v2 = rebuilt_plugin("recharge", "v2");
    same_stamp_replace(&wasm, &v2, false);
    s.app.plugins.scan().await;
    assert_eq!(
        status(&s, "recharge").await["sha256"],
        sha256_hex(&v2),
        "renamed over"
    );

    // An overwrite in place keeps the inode; its ctime moves.
    let v3 = rebuilt_plugin("recharge", "v3");
    same_stamp_replace(&wasm, &v3, true);
    s.app.plugins.scan().await;
    assert_eq!(
        status(&s, "recharge").await["sha256"],
        sha256_hex(&v3),
        "overwritten in place"
    );

    // And a forced reload hashes every file, whatever the filesystem says.
    let v4 = rebuilt_plugin("recharge", "v4");
    same_stamp_replace(&wasm, &v4, true);
    let report = s.reload_plugins().await;
    assert_eq!(
        report["report"]["loaded"],
        serde_json::json!(["recharge"]),
        "{report}"
    );
    assert_eq!(status(&s, "recharge").await["sha256"], sha256_hex(&v4));
    let report = s.reload_plugins().await;
    assert_eq!(
        report["report"]["unchanged"],
        serde_json::json!(["recharge"]),
        "{report}"
    );
}
